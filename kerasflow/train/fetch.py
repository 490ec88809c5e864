"""Download what training needs from the internet, once: the TFDS dataset and the VGG16 weights.

    kerasflow data     # `make data`: TFDS download + prepare, with tfds' progress bars
    kerasflow weights  # `make weights`: VGG16 ImageNet notop weights into $KERAS_HOME
"""

from __future__ import annotations

import logging

from kerasflow import config
from kerasflow.errors import UserError
from kerasflow.train.models import vgg16_base

log = logging.getLogger(__name__)

# Lazy imports: tensorflow_datasets, inside the functions that use them (seconds to load;
# `--help`, the light host env and the other commands never pay for them).


def fetch_data(tfds_name: str, data_dir: str) -> None:
    import tensorflow_datasets as tfds

    builder = tfds.builder(tfds_name, data_dir=data_dir)
    if builder.is_prepared():
        log.info(f"{tfds_name} is already prepared in {data_dir}")
        return
    try:
        builder.download_and_prepare()
    except Exception as exc:
        if "Connection" in type(exc).__name__ or "Connection" in str(exc):
            raise UserError(
                f"cannot download {tfds_name} (no internet?): run `make data` on a machine with "
                f"internet and copy {data_dir} here"
            ) from None
        raise
    log.info(f"{tfds_name} prepared in {data_dir}")


def fetch_weights() -> None:

    vgg16_base(config.load().replace(model="vgg16", weights="imagenet", image_size=32))
    log.info("VGG16 ImageNet weights are cached")
