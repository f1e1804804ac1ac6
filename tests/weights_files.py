"""Weights files in the layout Keras downloads, made from randomly initialised backbones."""

from __future__ import annotations

from pathlib import Path


def write_weights_file(model, path: Path) -> Path:
    """Saves `model`'s weights as the HDF5 file `keras.applications` downloads and loads.

    Such a file checks architecture and loading, never accuracy: its weights are random.
    """
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)
    return path


def random_backbone_weights(constructor: str, path: Path, alpha: float | None = None, input_size: int = 224) -> Path:
    """A weights file for `keras.applications.<constructor>` without its top, drawn at random."""
    import keras

    kwargs = {"include_top": False, "weights": None, "input_shape": (input_size, input_size, 3)}
    if alpha is not None:
        kwargs["alpha"] = alpha
    model = getattr(keras.applications, constructor)(**kwargs)
    return write_weights_file(model, path)
