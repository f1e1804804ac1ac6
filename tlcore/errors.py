"""Exceptions a user can cause, each carrying a sentence a non-programmer can act on."""


class TransferLabError(Exception):
    """Base class: the message is shown to the user as it is, without a traceback."""


class ModelConfigError(TransferLabError, ValueError):
    """A backbone, cut layer, input size or head setting that cannot be built."""


class WeightsUnavailableError(TransferLabError):
    """Pretrained weights could not be found on disk nor downloaded."""


class DatasetError(TransferLabError, ValueError):
    """A dataset (folder or zip) that cannot be used for training."""


class UnsafeArchiveError(DatasetError):
    """A zip rejected before extraction because it could harm the server."""


class ImageError(TransferLabError, ValueError):
    """An image that cannot be opened or decoded."""


class RunError(TransferLabError):
    """A run folder that is missing, incomplete or cannot be loaded."""


class Stopped(Exception):
    """Raised inside long work when the user asked it to stop; not a failure."""
