#!/usr/bin/env python3
"""Evaluate finished runs' test predictions: Youden threshold, mlflow.models.evaluate metrics, ROC/PR.

Results are logged back to each run (metrics analysis_*, figure analysis/roc_pr.png, confusion matrix).
See kerasflow/analysis.py.

examples:
  python analyze_predictions.py --filter "tags.kerasflow.level = 'inner_fold'"
  python analyze_predictions.py --filter "metrics.test_accuracy > 0.9" --positive parasitized
"""

from __future__ import annotations

import sys

from kerasflow import analysis

if __name__ == "__main__":
    sys.exit(analysis.main())
