"""How much one upload may cost the server: pixels, files, bytes and depth, each settable by an environment variable."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

_MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """The limits of a shared classroom server; each field is read from `TLCORE_<FIELD NAME>` when set.

    Attributes:
        max_image_pixels: Most pixels one image may have (width x height). Pillow's own limit
            (89.5 million) lets a 200 KB file cost gigabytes to check.
        max_dataset_pixels: Most pixels all images of one dataset may have together.
        max_members: Most entries (files and folders) in one zip.
        max_total_bytes: Most bytes all files of a zip may take once unpacked.
        max_file_bytes: Most bytes one file of a zip may take once unpacked.
        max_ratio: Highest unpacked-to-packed size ratio of one file of 1 MiB or more.
        max_total_ratio: Highest unpacked-to-packed size ratio of the whole zip: many small
            files of zeros escape the per-file ratio.
        max_depth: Most folders one path of a zip may go down.
        max_name_length: Most characters in one file or folder name (file systems allow 255 bytes).
        max_path_length: Most characters in one whole path inside a zip.
        work_budget_bytes: Most bytes the whole work folder (uploads, datasets, converted copies,
            features) may take; the least recently used parts no training needs go first.
    """

    max_image_pixels: int = 20_000_000
    max_dataset_pixels: int = 5_000_000_000
    max_members: int = 20_000
    max_total_bytes: int = 2 * 1024 * _MiB
    max_file_bytes: int = 256 * _MiB
    max_ratio: float = 100.0
    max_total_ratio: float = 50.0
    max_depth: int = 12
    max_name_length: int = 120
    max_path_length: int = 400
    work_budget_bytes: int = 20 * 1024 * _MiB

    @classmethod
    def from_environment(cls, environ=None) -> "Limits":
        """The defaults, with any `TLCORE_<FIELD>` variable (for example `TLCORE_MAX_IMAGE_PIXELS`) applied.

        Raises:
            ValueError: a variable that is not a positive number.
        """
        environ = os.environ if environ is None else environ
        values = {}
        for item in dataclasses.fields(cls):
            text = environ.get(f"TLCORE_{item.name.upper()}")
            if text is None:
                continue
            kind = float if isinstance(item.default, float) else int
            try:
                value = kind(float(text)) if kind is int else kind(text)
            except ValueError:
                raise ValueError(f"TLCORE_{item.name.upper()} must be a number, not `{text}`.") from None
            if value <= 0:
                raise ValueError(f"TLCORE_{item.name.upper()} must be above 0, not `{text}`.")
            values[item.name] = value
        return cls(**values)


def current() -> Limits:
    """The limits in force now (the environment is read each time, so tests and servers can set it)."""
    return Limits.from_environment()
