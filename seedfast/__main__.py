"""``python -m seedfast``: the same as the ``seedfast`` command."""
import sys

from seedfast.cli import main

# Guarded: a multiprocessing child spawned from ``python -m seedfast`` imports this module as
# ``__mp_main__``, and must not run the command line again.
if __name__ == "__main__":
    sys.exit(main())
