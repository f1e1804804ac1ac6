"""Training: a job runs its stages (`stages`), with callbacks around `fit` (`callbacks`), reporting `events`.

Names load on first use, so `tlcore.training.state` (what a server reads about a job) does not
import TensorFlow.
"""

from __future__ import annotations

import importlib

_NAMES = {
    "JobState": "tlcore.training.state",
    "TrainConfig": "tlcore.config",
    "TrainingJob": "tlcore.training.job",
    "explain_failure": "tlcore.training.job",
    "result_dict": "tlcore.training.job",
    "train": "tlcore.training.job",
    "class_weights": "tlcore.training.stages",
    "compile_for": "tlcore.training.stages",
    "make_optimizer": "tlcore.training.stages",
    "stages_for": "tlcore.training.stages",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module 'tlcore.training' has no attribute {name!r}")
    return getattr(importlib.import_module(_NAMES[name]), name)
