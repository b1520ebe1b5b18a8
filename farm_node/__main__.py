import sys

from farm_node.cli import main

sys.exit(main())
