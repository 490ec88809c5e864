"""Which GPUs the workers of one box get: one each, without starting TensorFlow."""

from __future__ import annotations

import os

from kerasflow import box


def visible_gpus() -> list[str]:
    """The GPUs this process may use, without starting TensorFlow: CUDA_VISIBLE_DEVICES when set,
    else what nvidia-smi lists (kerasflow/box.py; none without the tool)."""

    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [d.strip() for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    return box.gpu_indexes()


def gpu_env(worker: int, workers: int, gpus: list[str]) -> dict[str, str]:
    """Several workers on one GPU box: worker k gets GPU k mod n alone, so the first does not take
    every GPU's memory (TensorFlow maps all it sees); more workers than GPUs share with memory growth."""
    if workers <= 1 or not gpus:
        return {}
    env = {"CUDA_VISIBLE_DEVICES": gpus[worker % len(gpus)]}
    if workers > len(gpus):
        env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
    return env
