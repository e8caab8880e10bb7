"""``python -m bridge`` is the ``smpp-bridge`` command (the same entry point)."""

import sys

from bridge.cli import main

sys.exit(main())
