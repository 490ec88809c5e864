#!/usr/bin/env python3
"""Send image files to a served model (`make serve`) and print each one's predicted class.

The command is kerasflow/cli/predict.py (`kerasflow predict --help` is the same); this file stays for
`python predict.py`, the Makefile and MLproject."""

import sys

from kerasflow.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
