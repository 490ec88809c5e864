#!/usr/bin/env python3
"""Evaluate finished runs' test predictions: Youden threshold, mlflow.models.evaluate metrics, ROC/PR.

The command is kerasflow/cli/analyze.py (`kerasflow analyze --help` is the same); this file stays for
`python analyze_predictions.py`, the Makefile and MLproject."""

import sys

from kerasflow.cli.analyze import main

if __name__ == "__main__":
    sys.exit(main())
