"""Download the VGG16 ImageNet weights once (`kerasflow weights` = `make weights`); the data source's own
download (`make data`) is its `fetch` (kerasflow/train/sources/)."""

from __future__ import annotations

import logging

from kerasflow import config
from kerasflow.train.models import vgg16_base

log = logging.getLogger(__name__)


def fetch() -> None:
    """Build VGG16 with ImageNet weights once: Keras downloads them into $KERAS_HOME (internet)."""
    vgg16_base(config.load().replace(model="vgg16", weights="imagenet", image_size=32))
    log.info("VGG16 ImageNet weights are cached")
