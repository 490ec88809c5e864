#!/usr/bin/env python3
"""Nested cross-validation as MLflow runs: cv -> outer -> inner fold (kerasflow/experiments/crossval.py).

The command is kerasflow/cli/cv.py (`kerasflow cv --help` is the same); this file stays for
`python cv.py`, the Makefile and MLproject."""

import sys

from kerasflow.cli.cv import main

if __name__ == "__main__":
    sys.exit(main())
