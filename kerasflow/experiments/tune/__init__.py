"""`kerasflow tune`: an Optuna search over config.yaml's search_space (lead.py runs it; study.py, workers.py,
gpus.py are its parts)."""
