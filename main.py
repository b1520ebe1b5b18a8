"""Start the EncodeFlow desktop control panel (also installed as `encodeflow-desktop`)."""

import sys

from app.main import main

if __name__ == "__main__":
    sys.exit(main())
