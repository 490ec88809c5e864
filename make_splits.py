#!/usr/bin/env python3
"""Write the dataset's nested cross-validation folds to a splits file, once (kerasflow/experiments/folds.py).

The command is kerasflow/cli/splits.py (`kerasflow splits --help` is the same); this file stays for
`python make_splits.py`, the Makefile and MLproject."""

import sys

from kerasflow.cli.splits import main

if __name__ == "__main__":
    sys.exit(main())
