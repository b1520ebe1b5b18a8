"""Qt item models: the tables and lists the pages show, fed from the hub and the background runner."""
