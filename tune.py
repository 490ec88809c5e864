#!/usr/bin/env python3
"""Hyperparameter search with Optuna over config.yaml's search_space (see kerasflow/search.py).

Every trial is a nested MLflow run under one search run; the best parameters are retrained, logged
and optionally registered. --trials is the study's total, so rerunning continues an interrupted study.

examples:
  python tune.py --trials 20 --set data_source=synthetic --set model=cnn --set image_size=48
  python tune.py --trials 40 --workers 2 --study lr-dropout --register malaria-vgg16
  python tune.py --storage postgresql://user@db/optuna --study shared   # on each machine
"""

from __future__ import annotations

import sys

from kerasflow import search

if __name__ == "__main__":
    sys.exit(search.main())
