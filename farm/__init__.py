"""EncodeFlow's Qt-free core: settings, job spec, storage, database, queue, probing, CLI.

Nothing in this package imports Qt, `app` or `farm_node` (checked by tests/test_boundaries.py).
"""

__version__ = "0.1.0"
