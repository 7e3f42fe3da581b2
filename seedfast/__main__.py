"""``python -m seedfast``: the same as the ``seedfast`` command."""
import sys

from seedfast.cli import main

# Guarded: a process that ``seedfast demo`` spawns imports this module as ``__mp_main__``.
if __name__ == "__main__":
    sys.exit(main())
