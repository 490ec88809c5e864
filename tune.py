#!/usr/bin/env python3
"""Hyperparameter search with Optuna over config.yaml's search_space (see kerasflow/experiments/search.py).

The command is kerasflow/cli/tune.py (`kerasflow tune --help` is the same); this file stays for
`python tune.py`, the Makefile and MLproject."""

import sys

from kerasflow.cli.tune import main

if __name__ == "__main__":
    sys.exit(main())
