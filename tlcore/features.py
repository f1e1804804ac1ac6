"""Frozen-backbone features: computed once per image, cached on disk, reused across runs."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

import numpy as np

FEATURE_DTYPE = np.float16
"""How feature maps are stored: half the disk and memory of float32, same accuracy."""
POOLED_DTYPE = np.float32
"""How pooled features are stored: they are small, and exact float32 lets training on them
retrace the classic training on images step for step."""
DEFAULT_CACHE_BYTES = 4 * 1024**3
# Bump when the way features are computed changes, so stale caches are never reused.
FEATURE_FORMAT = 3

MAP = "map"
"""The cut layer's whole feature map, `(height, width, channels)` per image."""
POOLED = ("avg", "max")
"""The map averaged or maximised over height and width, `(channels,)` per image."""
VARIANTS = (MAP, *POOLED)

# Features at most this large (as float32) are read into memory for training; larger ones are
# streamed from disk batch by batch, so a Flatten head on a big cut never holds them all.
IN_MEMORY_BYTES = 512 * 1024**2


def feature_key(model_key: dict, paths) -> str:
    """Names the features of these image files under these backbone settings.

    A file is identified by its path, size and modification time, so an edited image is
    extracted again.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": FEATURE_FORMAT, **model_key}, sort_keys=True).encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"\n{os.path.abspath(path)}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def variant_key(key: str, variant: str) -> str:
    """The cache entry holding one variant (`"map"`, `"avg"` or `"max"`) of the features `key` names."""
    if variant not in VARIANTS:
        raise ValueError(f"Unknown feature variant `{variant}`. Choose one of: {', '.join(VARIANTS)}.")
    return key if variant == MAP else f"{key}-{variant}"


class FeatureCache:
    """A folder of `.npy` feature arrays, bounded in size, evicting the least recently used.

    Args:
        folder: Where the arrays live.
        max_bytes: Total size kept; older entries are deleted past it.
    """

    def __init__(self, folder: str | Path, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.folder = Path(folder)
        self.max_bytes = int(max_bytes)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.npy"

    def get(self, key: str):
        """The cached array, memory-mapped read-only, or None."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # marks it recently used
        return array

    def create(self, key: str, shape: tuple[int, ...], dtype=FEATURE_DTYPE) -> "FeatureWriter":
        """Starts writing a new entry; it becomes visible only when `commit()` is called."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return FeatureWriter(self, key, shape, dtype)

    def entries(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob("*.npy"), key=lambda p: p.stat().st_mtime)

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.entries())

    def evict(self, keep: str | Iterable[str] | None = None) -> None:
        """Deletes least recently used entries until the cache fits in `max_bytes`.

        Args:
            keep: Key, or keys, never deleted now (the entries being used).
        """
        kept = {keep} if isinstance(keep, str) else set(keep or ())
        entries = self.entries()
        total = sum(p.stat().st_size for p in entries)
        for path in entries:
            if total <= self.max_bytes:
                break
            if path.stem in kept:
                continue
            total -= path.stat().st_size
            path.unlink(missing_ok=True)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class FeatureWriter:
    """Writes features batch by batch into a new `.npy` file, then publishes it.

    Batches are appended with plain file writes rather than through a memory map, so writing
    features larger than memory never makes them resident in the process.
    """

    def __init__(self, cache: FeatureCache, key: str, shape: tuple[int, ...], dtype=FEATURE_DTYPE):
        self.cache = cache
        self.key = key
        self.shape = tuple(int(v) for v in shape)
        self.dtype = np.dtype(dtype)
        self.tmp = cache.folder / f".{key}.{uuid.uuid4().hex[:8]}.npy.tmp"
        self._file = open(self.tmp, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_1_0(self._file, header)
        self._data_start = self._file.tell()
        self.count = 0

    def write(self, batch) -> None:
        batch = np.ascontiguousarray(batch, dtype=self.dtype)
        if batch.shape[1:] != self.shape[1:] or self.count + len(batch) > self.shape[0]:
            raise ValueError(f"A batch of shape {batch.shape} does not fit features of shape {self.shape} after {self.count} rows.")
        self._file.write(batch.data)
        self.count += len(batch)

    def commit(self, keep: Iterable[str] = ()):
        """Publishes the entry and returns it memory-mapped read-only.

        Args:
            keep: Keys of other entries in use, never evicted to make room for this one.
        """
        # Rows never written read as zeros, as in a freshly created array.
        self._file.truncate(self._data_start + math.prod(self.shape) * self.dtype.itemsize)
        self._file.close()
        os.replace(self.tmp, self.cache._path(self.key))
        self.cache.evict(keep={self.key, *keep})
        return self.cache.get(self.key)

    def abort(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)


class DiskRows:
    """Rows of a cached `.npy` array, read straight from the file when indexed.

    Unlike a memory map, reading never keeps the file's pages mapped in the process, so memory
    use stays at one batch whatever the size of the file. The file is held open, so an entry
    evicted from the cache meanwhile can still be read.

    Args:
        array: A memory map returned by `FeatureCache.get`.
    """

    def __init__(self, array: np.memmap):
        self.shape = tuple(array.shape)
        self.dtype = array.dtype
        self.offset = int(array.offset)
        self.row_bytes = self.dtype.itemsize * math.prod(self.shape[1:])
        self._fd = os.open(array.filename, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def __del__(self):
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.close(fd)

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.arange(self.shape[0])[rows] if isinstance(rows, slice) else np.asarray(rows).reshape(-1)
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        view = out.reshape(len(rows), -1).view(np.uint8)
        start = 0
        # One read per run of consecutive rows: a sorted batch takes few calls.
        while start < len(rows):
            end = start + 1
            while end < len(rows) and rows[end] == rows[end - 1] + 1:
                end += 1
            target = memoryview(view[start:end]).cast("B")
            position = self.offset + int(rows[start]) * self.row_bytes
            done = 0
            while done < len(target):
                read = os.preadv(self._fd, [target[done:]], position + done)
                if not read:
                    raise OSError("A cached feature file is shorter than its header says; delete the feature cache.")
                done += read
            start = end
        return out


def training_array(array, max_bytes: int | None = None):
    """What the head trains on: a float32 copy in memory when small, else rows read from disk.

    Args:
        array: Features as returned by `FeatureCache.get` (or any array).
        max_bytes: Largest float32 size held in memory; `IN_MEMORY_BYTES` by default.

    Returns:
        A `numpy.ndarray`, or a `DiskRows` for memory-mapped features larger than `max_bytes`.
    """
    if not isinstance(array, np.memmap):
        return np.asarray(array, dtype=np.float32)
    if array.size * 4 > (IN_MEMORY_BYTES if max_bytes is None else max_bytes):
        return DiskRows(array)
    rows = DiskRows(array)
    return rows[:].astype(np.float32)


def pool(features: np.ndarray, variant: str) -> np.ndarray:
    """Pools feature maps `(n, height, width, channels)` over height and width, in float32."""
    values = np.asarray(features, dtype=np.float32)
    return values.mean(axis=(1, 2)) if variant == "avg" else values.max(axis=(1, 2))


# Backbone inference with batch normalisation folded into the convolutions ---------------------


def _fold_plan(body) -> dict:
    """Finds each convolution whose only use is a batch normalisation, which can absorb it."""
    import keras

    layers = keras.layers
    # Keras keeps a functional model's graph in `_nodes_by_depth`; there is no public view of it.
    nodes = [node for depth in body._nodes_by_depth.values() for node in depth]
    uses: dict[int, int] = {}
    for node in nodes:
        for tensor in node.input_tensors:
            uses[id(tensor._keras_history.operation)] = uses.get(id(tensor._keras_history.operation), 0) + 1
    outputs = {id(tensor._keras_history.operation) for tensor in body.outputs}
    plan = {}
    for node in nodes:
        norm = node.operation
        if type(norm) is not layers.BatchNormalization or len(node.input_tensors) != 1:
            continue
        conv = node.input_tensors[0]._keras_history.operation
        foldable = (
            type(conv) in (layers.Conv2D, layers.DepthwiseConv2D)
            and getattr(conv, "groups", 1) == 1
            and conv.data_format == "channels_last"
            and conv.activation is keras.activations.linear
            and norm.axis in (-1, 3)
            and uses.get(id(conv)) == 1
            and id(conv) not in outputs
            and len(conv._inbound_nodes) == 1
        )
        if foldable:
            plan[id(conv)] = (conv, norm)
    return plan


def _folded_weights(conv, norm) -> tuple[np.ndarray, np.ndarray]:
    variance = np.asarray(norm.moving_variance, dtype=np.float64)
    scale = 1.0 / np.sqrt(variance + norm.epsilon)
    if norm.scale:
        scale = scale * np.asarray(norm.gamma, dtype=np.float64)
    shift = -np.asarray(norm.moving_mean, dtype=np.float64) * scale
    if norm.center:
        shift = shift + np.asarray(norm.beta, dtype=np.float64)
    kernel = np.asarray(conv.kernel, dtype=np.float64)
    if conv.use_bias:
        shift = shift + np.asarray(conv.bias, dtype=np.float64) * scale
    # Conv2D kernels end in output channels; a depthwise kernel's output channel is
    # (input channel, multiplier) flattened.
    kernel = kernel * scale.reshape(kernel.shape[-2], kernel.shape[-1]) if type(conv).__name__ == "DepthwiseConv2D" else kernel * scale
    return kernel.astype(np.float32), shift.astype(np.float32)


def folded_forward(body):
    """The frozen body as a function with batch normalisation folded into convolutions.

    In inference a batch normalisation is an affine map per channel, so it can be merged into
    the convolution before it: one pass over each feature map instead of three. The result
    equals the body's own output up to float32 rounding.

    Args:
        body: A frozen functional `keras.Model` (see `tlcore.model.build_body`).

    Returns:
        A function from preprocessed images to the body's output, or None when the body has
        nothing to fold or its graph cannot be read.
    """
    import tensorflow as tf

    try:
        plan = _fold_plan(body)
    except (AttributeError, TypeError):
        return None
    if not plan:
        return None
    replaced = {}
    for conv, norm in plan.values():
        kernel, bias = _folded_weights(conv, norm)
        kernel = tf.Variable(kernel, trainable=False, name=f"{conv.name}_folded_kernel")
        bias = tf.Variable(bias, trainable=False, name=f"{conv.name}_folded_bias")
        replaced[id(conv)] = _folded_conv(conv, kernel, bias)
        replaced[id(norm)] = _passthrough

    def operation(op):
        if id(op) in replaced:
            return replaced[id(op)]

        def call(*args, **kwargs):
            # As a functional model does when called with training=False.
            if "training" in getattr(op, "_call_context_args", ()):
                kwargs["training"] = False
            return op(*args, **kwargs)

        return call

    def forward(images):
        outputs = body._run_through_graph(images, operation_fn=operation)
        return outputs[0] if isinstance(outputs, (list, tuple)) and len(outputs) == 1 else outputs

    return forward


def _passthrough(inputs, *args, **kwargs):
    return inputs


def _folded_conv(conv, kernel, bias):
    import keras
    import tensorflow as tf

    depthwise = type(conv).__name__ == "DepthwiseConv2D"

    def call(inputs, *args, **kwargs):
        if depthwise:
            outputs = keras.ops.depthwise_conv(
                inputs, kernel, strides=conv.strides, padding=conv.padding,
                data_format=conv.data_format, dilation_rate=conv.dilation_rate,
            )
        else:
            outputs = keras.ops.conv(
                inputs, kernel, strides=list(conv.strides), padding=conv.padding,
                data_format=conv.data_format, dilation_rate=conv.dilation_rate,
            )
        # BiasAdd rather than Add: TensorFlow fuses Conv2D + BiasAdd + ReLU into one kernel.
        return tf.nn.bias_add(outputs, bias)

    return call
