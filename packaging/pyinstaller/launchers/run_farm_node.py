"""The bundled `farm-node` executable (the same entry point as the installed console script)."""

import sys

from farm_node.cli import main

sys.exit(main())
