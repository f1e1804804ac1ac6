"""Perceptual-hash near-duplicate detection: resized, re-encoded, slightly cropped or brightened copies."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image

# Three 64-bit hashes side by side (phash, dhash, vertical dhash). Measured on the real flowers and
# horse-or-human sets, the 192-bit sum of distances separated copies from different photos better
# than any single 64-bit hash: at ~91% recall on 5%-cropped copies it flagged 6 pairs of different
# flower photos, against 16 for phash+dhash and 91 (at only 82% recall) for phash alone.
HASH_BITS = 192

# Measured: resized (0.5x, 2x), JPEG q60, PNG and +10% brightness copies of 200 flower photos are
# all within 9 bits of their original. Of the 40 pairs of the flowers set that are one photo
# twice (checked by eye; often re-edited: tinted, re-cropped), 24 bits find 23 and flag 1 pair of
# different photos; 38 would find 32 but flag 6. Among the 300 horse-or-human renders 24 bits
# pair 5 near-identical frames of one animation, 38 would pair 27. Copies cropped 5% on each
# side are found about a third of the time.
DEFAULT_MAX_DISTANCE = 24

# The structure hash sees grey levels only: a brown and a grey horse in one pose, or two shapes
# of one outline in other colours, hash alike. A pair must also agree in colour: the largest
# difference of a 4x4 grid of mean colours (0-255). Resizing and re-encoding move it by 2 at most,
# +10% brightness by 22; those renders and shapes differ by 35 to 174. Re-tinted copies are missed.
MAX_COLOUR_DIFFERENCE = 32
_COLOUR_GRID = 4

_WORD_BITS = 64
_WORD_MASK = (1 << _WORD_BITS) - 1

# Elements of one chunk's rows x columns block: bounds the XOR temporary to about 32 MB, whatever
# the dataset size, while keeping chunks large enough that numpy's per-call overhead stays small.
_CHUNK_ELEMENTS = 1 << 22

# np.bitwise_count only exists from numpy 2.0; the project still allows numpy 1.26.
_BYTE_POPCOUNT = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint8)


def perceptual_hash(image: Image.Image) -> int:
    """Perceptual hash of a decoded image, insensitive to resizing, re-encoding and small edits.

    Args:
        image: A decoded image; it is converted to RGB first (an alpha channel is dropped),
            so RGBA renders hash like their RGB versions.

    Returns:
        A non-negative integer of `HASH_BITS` bits: phash, dhash and vertical dhash (8x8 each,
        from `imagehash`) concatenated, compared with `hash_distance`.
    """
    # imported here so that importing tlcore does not require the optional dependency
    import imagehash

    gray = image.convert("RGB").convert("L")
    value = 0
    for part in (imagehash.phash(gray), imagehash.dhash(gray), imagehash.dhash_vertical(gray)):
        bits = np.packbits(part.hash.flatten())
        value = (value << _WORD_BITS) | int.from_bytes(bits.tobytes(), "big")
    return value


def colour_signature(image: Image.Image) -> bytes:
    """The mean colour of each cell of a 4x4 grid over the image, as 48 bytes (RGB per cell)."""
    small = image.convert("RGB").resize((_COLOUR_GRID, _COLOUR_GRID), Image.BOX)
    return np.asarray(small, dtype=np.uint8).tobytes()


def colour_difference(a: bytes, b: bytes) -> int:
    """The largest difference between two colour signatures' cells, 0-255."""
    return int(np.abs(np.frombuffer(a, np.uint8).astype(np.int16) - np.frombuffer(b, np.uint8)).max())


def hash_distance(a: int, b: int) -> int:
    """Number of differing bits between two hashes.

    Args:
        a: A hash from `perceptual_hash`.
        b: Another hash from `perceptual_hash`.

    Returns:
        The Hamming distance, 0 for identical hashes.
    """
    return (a ^ b).bit_count()


def near_duplicate_pairs(
    hashes: Sequence[int | None],
    max_distance: int = DEFAULT_MAX_DISTANCE,
    colours: Sequence[bytes | None] | None = None,
    max_colour_difference: int = MAX_COLOUR_DIFFERENCE,
) -> list[tuple[int, int, int]]:
    """All pairs of hashes within `max_distance` bits of each other (and alike in colour, when given).

    Args:
        hashes: Non-negative integer hashes of any width (such as `perceptual_hash` values);
            None marks an image that could not be read and is never paired.
        max_distance: Largest Hamming distance that still counts as a near duplicate.
        colours: `colour_signature` of each image; pairs further apart in colour than
            `max_colour_difference` are left out. None compares structure only.
        max_colour_difference: See `colours`.

    Returns:
        `(i, j, distance)` for every pair of positions i < j in `hashes` within `max_distance`,
        sorted by i then j.

    Raises:
        ValueError: If `max_distance` or a hash is negative.
    """
    if max_distance < 0:
        raise ValueError(f"max_distance must be at least 0, not {max_distance}")
    present = np.array([index for index, value in enumerate(hashes) if value is not None], dtype=np.int64)
    count = len(present)
    if count < 2:
        return []
    columns = _word_columns([hashes[index] for index in present])
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // count)
    found_i, found_j, found_distance = [], [], []
    for start in range(0, count - 1, rows_per_chunk):
        stop = min(start + rows_per_chunk, count - 1)
        # only columns after the chunk's first row: the upper triangle, plus a sliver inside
        # the chunk that the j > i mask below discards
        distance = np.zeros((stop - start, count - start - 1), dtype=np.uint16)
        for column in columns:
            distance += _popcount(column[start:stop, None] ^ column[None, start + 1 :])
        rows, cols = np.nonzero(distance <= max_distance)
        keep = cols >= rows
        rows, cols = rows[keep], cols[keep]
        found_i.append(rows + start)
        found_j.append(cols + start + 1)
        found_distance.append(distance[rows, cols])
    first = present[np.concatenate(found_i)].tolist()
    second = present[np.concatenate(found_j)].tolist()
    distances = np.concatenate(found_distance).tolist()
    pairs = list(zip(first, second, distances))
    if colours is not None:
        pairs = [
            (i, j, d) for i, j, d in pairs
            if colours[i] is not None and colours[j] is not None
            and colour_difference(colours[i], colours[j]) <= max_colour_difference
        ]
    return pairs


def group_pairs(n: int, pairs: Iterable[Sequence[int]]) -> list[list[int]]:
    """Connected groups of the images linked by pairs, so that copies of copies end up together.

    Args:
        n: Number of images; every index in `pairs` must be below it.
        pairs: `(i, j)` or `(i, j, distance)` items, such as `near_duplicate_pairs` returns.

    Returns:
        Groups of at least two indices, each sorted, ordered by their smallest index.

    Raises:
        ValueError: If a pair holds an index outside 0..n-1.
    """
    parent = list(range(n))

    def root(index: int) -> int:
        while parent[index] != index:
            # path halving keeps later look-ups short without recursion
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    for pair in pairs:
        i, j = pair[0], pair[1]
        if not (0 <= i < n and 0 <= j < n):
            raise ValueError(f"pair {tuple(pair)} has an index outside 0..{n - 1}")
        root_i, root_j = root(i), root(j)
        if root_i != root_j:
            parent[max(root_i, root_j)] = min(root_i, root_j)
    members: dict[int, list[int]] = {}
    for index in range(n):
        members.setdefault(root(index), []).append(index)
    return sorted((group for group in members.values() if len(group) > 1), key=lambda group: group[0])


def _word_columns(values: Sequence[int]) -> list[np.ndarray]:
    """The hashes split into 64-bit words, one contiguous uint64 array per word position."""
    values = [int(value) for value in values]
    if any(value < 0 for value in values):
        raise ValueError("hashes must be non-negative integers")
    words = max(1, -(-max(value.bit_length() for value in values) // _WORD_BITS))
    return [
        np.array([(value >> (_WORD_BITS * word)) & _WORD_MASK for value in values], dtype=np.uint64)
        for word in range(words)
    ]


def _popcount(words: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 element."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words)
    as_bytes = np.ascontiguousarray(words).view(np.uint8).reshape(*words.shape, 8)
    return _BYTE_POPCOUNT[as_bytes].sum(axis=-1, dtype=np.uint8)
