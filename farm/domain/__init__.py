"""What a job is: output configs and presets, the queue payload, storage keys, media probing."""
