"""The bundled `encodeflow` CLI (the same entry point as the installed console script)."""

import sys

from farm.cli import main

sys.exit(main())
