"""MLflow: the store, one tracked run, the environment record, the registry, comparing runs."""
