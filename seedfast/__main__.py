"""``python -m seedfast``: the same as the ``seedfast`` command."""
import sys

from seedfast.cli import main

sys.exit(main())
