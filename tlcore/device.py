"""Which device training runs on: the CPU, or a GPU TensorFlow can see."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def training_device() -> str:
    """`"CPU"`, or the name of the first GPU TensorFlow can use (with how many more there are)."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    try:
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name") or "GPU"
    except (RuntimeError, ValueError):
        name = "GPU"
    return name + (f" (and {len(gpus) - 1} more)" if len(gpus) > 1 else "")
