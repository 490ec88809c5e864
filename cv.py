#!/usr/bin/env python3
"""Nested cross-validation as MLflow runs: cv -> outer fold -> inner fold (see kerasflow/crossval.py).

The cv run gets the mean and std of every test metric over the outer folds.

examples:
  python cv.py --set splits_file=outputs/splits.json
  python cv.py --set splits_file=outputs/splits.json --n-outer 2 --n-inner 2 --experiment cv
"""

from __future__ import annotations

import sys

from kerasflow import crossval

if __name__ == "__main__":
    sys.exit(crossval.main())
