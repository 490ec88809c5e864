"""kerasflow: reproducible Keras training (VGG16 transfer or a small CNN) tracked in MLflow."""

__version__ = "0.1.0"
