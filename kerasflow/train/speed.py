"""How a run uses its hardware: several GPUs (MirroredStrategy), mixed precision, XLA, steps per call.

These keys change speed, and (except steps_per_execution) the numbers too, so they belong to a run's
identity. Everything TensorFlow-global is set here, once per run, before the model is built: a dtype
policy or strategy set later would leave the model half in the old one.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kerasflow.config import Config
from kerasflow.errors import UserError

log = logging.getLogger(__name__)

# Lazy imports: keras, tensorflow, inside the functions that use them (seconds to load;
# `--help`, the light host env and the other commands never pay for them).

if TYPE_CHECKING:
    import tensorflow as tf


@dataclass(frozen=True)
class Placement:
    """Where the model's variables live and how many copies train in step."""

    strategy: tf.distribute.Strategy
    devices: tuple[str, ...]

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    def scope(self) -> AbstractContextManager[Any]:
        return self.strategy.scope()


def global_batch(cfg: Config, placement: Placement) -> int:
    """Keras splits each batch across the replicas: batch_size is per replica, as the config says."""
    return cfg.batch_size * placement.replicas


def mirrored_devices() -> tuple[str, ...]:
    """The GPUs TensorFlow sees; without one, the logical CPU devices (one unless a caller split the CPU
    with tf.config.set_logical_device_configuration, as the tests do)."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return tuple(d.name for d in (gpus or tf.config.list_logical_devices("CPU")))


def setup(cfg: Config) -> Placement:
    """Set the dtype policy and pick the strategy for this run (call before building the model)."""
    import keras
    import tensorflow as tf

    keras.config.set_dtype_policy(cfg.precision)
    if cfg.distribute == "none":
        return Placement(tf.distribute.get_strategy(), ())
    devices = mirrored_devices()
    try:
        strategy = tf.distribute.MirroredStrategy(devices=list(devices))
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"distribute: mirrored cannot use the devices {list(devices)} ({exc}): "
                        "set distribute: none") from None
    placement = Placement(strategy, devices)
    kind = "GPU" if any("GPU" in d for d in devices) else "CPU device"
    log.info(f"distribute: mirrored over {placement.replicas} {kind}{'s' if placement.replicas > 1 else ''}, "
             f"global batch {global_batch(cfg, placement)}"
             f"{' (one device: no speed-up)' if placement.replicas == 1 else ''}")
    return placement


def compile_options(cfg: Config) -> dict[str, Any]:
    """Arguments of model.compile that follow the config. jit_compile is explicit: Keras' default
    ("auto") turns XLA on for a GPU and off for a CPU or a distribution strategy."""
    return {"jit_compile": cfg.jit_compile, "steps_per_execution": cfg.steps_per_execution}


def check_compiled(model: Any, cfg: Config) -> None:
    """The config's XLA choice is what Keras runs (it drops jit_compile=True without an error)."""
    if bool(model.jit_compile) != cfg.jit_compile:
        raise UserError(f"Keras would train with jit_compile={model.jit_compile} although the config says "
                        f"{cfg.jit_compile} (a layer without an XLA kernel?): set jit_compile: false")
