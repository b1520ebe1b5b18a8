"""The farm node's timing defaults, one home for the node, its command line and the readers of
its heartbeats. Plain numbers with no imports, so that ``farm-node --help`` stays light.

The numbers hang together: a node samples every ``HEARTBEAT_INTERVAL_S`` and publishes its status
every ``HEARTBEAT_PUBLISH_EVERY`` samples (5 s); the status key lives ``NODE_STATUS_TTL_S`` (three
missed publishes), after which readers show the node offline. BullMQ renews a job's lock every half
of ``LOCK_SECONDS``; a job whose lock ran out is found within about ``LOCK_SECONDS`` +
``STALLED_INTERVAL_SECONDS`` and failed after ``MAX_STALLED_COUNT`` such stalls.
"""

LOCK_SECONDS = 60.0  # a node's event loop blocked this long loses its job
STALLED_INTERVAL_SECONDS = 30.0  # how often a node looks for jobs whose lock expired
MAX_STALLED_COUNT = 3
RECONCILE_INTERVAL_S = 30.0  # one reconcile pass per interval on the whole farm
HEARTBEAT_INTERVAL_S = 1.0  # one CPU and memory sample per interval
HEARTBEAT_PUBLISH_EVERY = 5  # samples per status publish (sooner when the node's activity changes)
NODE_STATUS_TTL_S = 20.0
PROGRESS_TIMEOUT_S = 600.0  # FFmpeg silent this long is stopped (`farm-node --progress-timeout`)
METRICS_PORT = 9464  # /metrics and /health
