"""The training core, no MLflow: data sources and the input pipeline, models, the run loop, run folders."""
