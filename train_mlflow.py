#!/usr/bin/env python3
"""Train exactly as train.py does, inside ONE MLflow run that records everything needed to trust it.

The command is kerasflow/cli/track.py (`kerasflow track --help` is the same); this file stays for
`python train_mlflow.py`, the Makefile and MLproject."""

import sys

from kerasflow.cli.track import main

if __name__ == "__main__":
    sys.exit(main())
