"""``python -m torchpqt``: the same command line as the ``torchpqt`` console script."""

import sys

from torchpqt.cli import main

if __name__ == "__main__":
    sys.exit(main())
