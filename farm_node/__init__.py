"""The headless farm-node agent: job processor, FFmpeg runner, heartbeats, Prometheus exporter, CLI.

Imports `farm`, never Qt and never `app`.
"""
