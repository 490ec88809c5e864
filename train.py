#!/usr/bin/env python3
"""Train an image classifier (VGG16 transfer or a small CNN) with plain Keras, no MLflow.

The command is kerasflow/cli/train.py (`kerasflow train --help` is the same); this file stays for
`python train.py`, the Makefile and MLproject."""

import sys

from kerasflow.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
