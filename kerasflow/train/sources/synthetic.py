"""Procedurally drawn cells, offline: the demo's and the tests' data, reproducible from (seed, index)."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from kerasflow.config import Config
from kerasflow.train.examples import Examples, aligned_empty
from kerasflow.train.sources import Source

CLASSES = ["parasitized", "uninfected"]  # same order and meaning as TFDS malaria


def draw(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell-like images: a pale stained disc; 'parasitized' ones carry 1-4 small dark ring-stage dots.

    Image i depends only on (seed, i), so any subset or split is reproducible on its own.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = aligned_empty((n, size, size, 3))
    labels = np.empty(n, np.int32)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        label = int(rng.integers(0, 2))
        cx, cy = rng.uniform(0.4, 0.6, 2)
        radius = rng.uniform(0.30, 0.42)
        background = rng.uniform(225, 250)
        cell = np.array([rng.uniform(200, 235), rng.uniform(140, 175), rng.uniform(160, 200)], np.float32)
        inside = ((xx - cx) ** 2 + (yy - cy) ** 2) < radius**2
        img = np.full((size, size, 3), background, np.float32)
        img[inside] = cell
        if label == 0:
            for _ in range(int(rng.integers(1, 5))):
                angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0, radius * 0.75)
                px, py = cx + dist * np.cos(angle), cy + dist * np.sin(angle)
                r = rng.uniform(0.05, 0.08)
                dot = ((xx - px) ** 2 + (yy - py) ** 2) < r**2
                img[dot] = np.array([90, 40, 110], np.float32) + rng.normal(0, 8, 3)
        img += rng.normal(0, 6, img.shape)
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
        labels[i] = label
    return images, labels


def load(cfg: Config) -> Examples:
    images, labels = draw(cfg.synthetic_examples, cfg.image_size, cfg.seed)
    params = {"source": "synthetic", "examples": cfg.synthetic_examples, "image_size": cfg.image_size,
              "seed": cfg.seed, "generator": "draw_synthetic-v1"}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    return Examples(images, labels, list(CLASSES), digest, params,
                    [str(i) for i in range(len(labels))])


def class_names(cfg: Config) -> list[str]:
    return list(CLASSES)


SOURCE = Source(keys=("synthetic_examples", "seed"), load=load, class_names=class_names)
