"""``python -m hbfast``: the same command line as ``hbfast``."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
