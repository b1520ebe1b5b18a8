"""The bundled desktop panel (the same entry point as `encodeflow-desktop` and main.py)."""

import sys

from app.main import main

sys.exit(main())
