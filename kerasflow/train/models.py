"""Model builders: VGG16 transfer learning and a small from-scratch CNN.

Both take raw uint8 images: casting, augmentation and model-specific preprocessing are layers of the
model, so they run on the accelerator, are saved with it, and a served model needs no separate
preprocessing code. Only built-in Keras layers are used, so `model.keras` loads anywhere without
importing this package.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kerasflow.config import Config
from kerasflow.errors import UserError

# Lazy imports: keras, inside the functions that use them (seconds to load;
# `--help`, the light host env and the other commands never pay for them).

if TYPE_CHECKING:
    import keras

VGG16_BLOCKS = 5
VGG16_MEAN_BGR = (103.939, 116.779, 123.68)  # keras.applications.vgg16.preprocess_input, caffe mode


def binary(num_classes: int) -> bool:
    return num_classes == 2


def _vgg16_preprocess() -> keras.layers.Layer:
    """RGB->BGR and ImageNet mean subtraction as a frozen 1x1 convolution (exact, and serialisable)."""
    import keras

    layer = keras.layers.Conv2D(3, 1, trainable=False, name="vgg16_preprocess")
    layer.build((None, None, None, 3))
    kernel = np.zeros((1, 1, 3, 3), np.float32)
    for out_channel, in_channel in enumerate((2, 1, 0)):
        kernel[0, 0, in_channel, out_channel] = 1.0
    layer.set_weights([kernel, -np.array(VGG16_MEAN_BGR, np.float32)])
    return layer


def _augmentation(cfg: Config) -> list[keras.layers.Layer]:
    import keras

    if not cfg.augment:
        return []
    layers: list[keras.layers.Layer] = [
        keras.layers.RandomFlip("horizontal_and_vertical", seed=cfg.seed, name="flip")
    ]
    if cfg.rotation > 0:
        layers.append(keras.layers.RandomRotation(cfg.rotation, fill_mode="reflect",
                                                  seed=cfg.seed + 1, name="rotate"))
    return layers


def vgg16_base(cfg: Config) -> keras.Model:
    """keras.applications.VGG16 without its top; turns weight problems into one actionable line."""
    import keras

    weights: str | None = cfg.weights
    if weights.lower() == "none":
        weights = None
    elif weights != "imagenet":
        if not Path(weights).is_file():
            raise UserError(
                f"weights file {weights} does not exist: give a VGG16 (no top) weights file, "
                "weights: imagenet, or weights: none"
            )
    shape = (cfg.image_size, cfg.image_size, 3)
    try:
        return keras.applications.VGG16(include_top=False, weights=weights, input_shape=shape)
    except UserError:
        raise
    except Exception as exc:
        text = str(exc)
        if weights == "imagenet" and ("URL fetch failure" in text or "urlopen" in text.lower()):
            raise UserError(
                "cannot download the VGG16 ImageNet weights (offline?): run `make weights` where "
                "there is internet (it caches them in ~/.keras/models), use the Docker image (it bakes "
                "them in), point weights: at a local file, or set weights: none"
            ) from None
        if weights not in (None, "imagenet"):
            raise UserError(
                f"weights file {weights} does not fit a VGG16 without its top ({text.splitlines()[0]}): "
                "use a notop VGG16 weights file"
            ) from None
        raise


def set_fine_tune(base: keras.Model, blocks: int) -> None:
    """Unfreeze the last `blocks` VGG16 convolution blocks (block5 first); freeze everything else."""
    base.trainable = True
    open_blocks = {f"block{b}" for b in range(VGG16_BLOCKS - blocks + 1, VGG16_BLOCKS + 1)}
    for layer in base.layers:
        layer.trainable = layer.name.split("_")[0] in open_blocks


def build(cfg: Config, num_classes: int) -> keras.Model:
    """The configured model, uncompiled, with augmentation and preprocessing inside."""
    import keras

    inputs = keras.Input((cfg.image_size, cfg.image_size, 3), dtype="uint8", name="image")
    if cfg.model == "vgg16":
        x = keras.layers.Rescaling(1.0, name="to_float")(inputs)
        for layer in _augmentation(cfg):
            x = layer(x)
        x = _vgg16_preprocess()(x)
        base = vgg16_base(cfg)
        base.trainable = False
        x = base(x, training=False)  # BatchNorm-free, but keep inference mode for a frozen base
    else:
        x = keras.layers.Rescaling(1.0 / 255, name="to_float")(inputs)
        for layer in _augmentation(cfg):
            x = layer(x)
        filters = cfg.cnn_filters
        for block in range(cfg.cnn_blocks):
            for conv in range(2):
                x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu",
                                        name=f"conv{block + 1}_{conv + 1}")(x)
            x = keras.layers.MaxPooling2D(name=f"pool{block + 1}")(x)
            filters *= 2
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if cfg.dense_units:
        x = keras.layers.Dense(cfg.dense_units, activation="relu", name="dense")(x)
    if cfg.dropout:
        x = keras.layers.Dropout(cfg.dropout, seed=cfg.seed + 2, name="dropout")(x)
    # float32 whatever the precision: a float16 sigmoid/softmax saturates and its loss loses digits
    if binary(num_classes):
        outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="probability")(x)
    else:
        outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                                     name="probability")(x)
    return keras.Model(inputs, outputs, name=f"{cfg.model}_classifier")


def weights_digest(model: keras.Model) -> str:
    """sha256 of the weight arrays (names, shapes, dtypes, bytes) in the model's order: what a
    reproduction compares. The .keras file would not do: it embeds the date it was saved."""

    h = hashlib.sha256()
    for w in model.weights:
        array = np.ascontiguousarray(w.numpy())
        h.update(f"{w.path}|{array.dtype}|{array.shape}\n".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def find_base(model: keras.Model) -> keras.Model | None:
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model) and layer.name == "vgg16":
            return layer
    return None


def compile_model(model: keras.Model, num_classes: int, learning_rate: float, *, jit_compile: bool = False,
                  steps_per_execution: int = 1) -> None:
    """Adam, the task's loss and metrics. Under a mixed_float16 policy Keras wraps the optimizer in a
    LossScaleOptimizer itself."""
    import keras

    if binary(num_classes):
        loss = keras.losses.BinaryCrossentropy()
        metrics = [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")]
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=metrics,
                  jit_compile=jit_compile, steps_per_execution=steps_per_execution)
