"""Experiments over tracked runs: CV folds, nested cross-validation, Optuna search, analysis."""
