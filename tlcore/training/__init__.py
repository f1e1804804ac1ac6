"""Training: a job runs its stages (`stages`), with callbacks around `fit` (`callbacks`), reporting `events`."""

from tlcore.config import TrainConfig
from tlcore.training.job import JobState, TrainingJob, explain_failure, result_dict, train
from tlcore.training.stages import class_weights, compile_for, make_optimizer, stages_for

__all__ = [
    "JobState",
    "TrainConfig",
    "TrainingJob",
    "class_weights",
    "compile_for",
    "explain_failure",
    "make_optimizer",
    "result_dict",
    "stages_for",
    "train",
]
