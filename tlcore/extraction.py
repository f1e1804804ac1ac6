"""Running the frozen backbone over images: kept bodies, folded batch norm, and features into the cache.

A body is built once per process for each backbone, cut and weights file, and kept; it is
never trained (`body_copy` hands out a copy to a stage that trains one). Features are named in
the cache by everything that decides them (`extraction_key`) and, per image, by the image's
bytes, so only pictures never seen before go through the network.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import keras
import numpy as np

from tlcore.backbones import WeightsInfo, resolve_weights
from tlcore.config import ModelConfig
from tlcore.errors import Stopped
from tlcore.features import FEATURE_DTYPE, MAP, MAP32, POOLED, FeatureCache, check_variant
from tlcore.images import PIPELINE_VERSION
from tlcore.inputs import AUGMENTATION_VERSION, augmenter, readable_image_batches
from tlcore.model import build_body_with_weights, preprocess

# Bump when the way features are computed changes, so stale caches are never reused.
FEATURE_FORMAT = 4
# Images per backbone call while extracting. Small batches keep a MobileNet's activations in
# the CPU caches and measured fastest on a 2-core machine (see docs/performance.md).
EXTRACTION_BATCH = 8
# Frozen bodies kept ready in this process, so training again skips loading the weights.
CACHED_BODIES = 2

Progress = Callable[[int, int, bool], None]
"""Called as `progress(done, total, cached)` while features are read or computed."""


@dataclass(frozen=True)
class Features:
    """What `features_for` gives: one row per readable item, and the items that could not be read.

    Attributes:
        rows: A float32 array, or `tlcore.features.Rows` read from disk, one row per item of
            `items` that is not in `unreadable`, in order.
        unreadable: Items TensorFlow could not decode, left out.
    """

    rows: object
    unreadable: tuple = ()

    def keep(self, items: Sequence) -> list:
        """The items the rows belong to."""
        left_out = {id(item) for item in self.unreadable}
        return [item for item in items if id(item) not in left_out]


@dataclass
class KeptBody:
    """A frozen body ready for extraction, with what identifies its features.

    Attributes:
        config: The resolved model settings it was built for.
        body: The frozen `keras.Model`; never train it (see `body_copy`).
        weights: Which weights file it loaded.
        fingerprint: SHA-256 of its architecture and weights, computed once.
        extractors: Traced `FeatureExtractor`s, by the variants they return.
    """

    config: ModelConfig
    body: object
    weights: WeightsInfo
    fingerprint: str
    extractors: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.body.output.shape[1:])


def body_fingerprint(body) -> str:
    """Names a built body by its architecture and every weight value."""
    digest = hashlib.sha256()
    digest.update(json.dumps(body.get_config(), sort_keys=True, default=str).encode())
    for weight in body.weights:
        values = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        digest.update(f"{weight.path}:{values.dtype}:{values.shape}".encode())
        digest.update(values.data)
    return digest.hexdigest()


_BODIES: OrderedDict[str, KeptBody] = OrderedDict()
_BODIES_LOCK = threading.Lock()


def _body_key(config: ModelConfig, weights: WeightsInfo) -> str:
    return json.dumps([config.backbone, config.alpha, config.input_size, config.cut_layer, weights.source,
                       str(weights.path), weights.digest])


def frozen_body(config: ModelConfig) -> KeptBody:
    """The frozen body of `config`, built once per weights file and kept for the next training.

    Bodies with random weights are never kept: each build draws new ones.

    Raises:
        ModelConfigError: unknown cut layer or invalid settings.
        WeightsUnavailableError: the pretrained weights cannot be had.
    """
    config = config.resolved()
    expected = resolve_weights(config.backbone, config.alpha, config.input_size, config.weights)
    key = _body_key(config, expected)
    if expected.digest is not None:
        with _BODIES_LOCK:
            kept = _BODIES.get(key)
            if kept is not None:
                _BODIES.move_to_end(key)
                return kept
    body, weights = build_body_with_weights(config)
    kept = KeptBody(config, body, weights, body_fingerprint(body))
    if weights.digest is not None:
        with _BODIES_LOCK:
            _BODIES[_body_key(config, weights)] = kept
            while len(_BODIES) > CACHED_BODIES:
                _BODIES.popitem(last=False)
    return kept


def body_copy(kept: KeptBody):
    """A copy of a kept body, with its weights and its layers' names, for a stage that trains it."""
    from tlcore.backbones import fresh_layer_names
    from tlcore.model import freeze

    with fresh_layer_names():
        copy = keras.Model.from_config(kept.body.get_config())
    copy.set_weights(kept.body.get_weights())
    freeze(copy)
    return copy


def forget_bodies() -> None:
    """Drops the kept bodies and their extractors, freeing their memory."""
    with _BODIES_LOCK:
        _BODIES.clear()


def extraction_key(kept: KeptBody, extractor: "FeatureExtractor", augmentation: dict | None = None,
                   layer: str | None = None) -> str:
    """Names the features a kept body and extractor make: everything that decides their values."""
    import tensorflow as tf

    config = kept.config
    payload = {
        "format": FEATURE_FORMAT,
        "backbone": config.backbone,
        "alpha": config.alpha,
        "input_size": config.input_size,
        "cut_layer": config.cut_layer,
        "weights": kept.weights.digest or "random",
        "body": kept.fingerprint,
        "folded": extractor.folded,
        "map_dtype": np.dtype(FEATURE_DTYPE).name,
        "images": PIPELINE_VERSION,
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
        "augmentation": augmentation,
        "layer": layer,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def cached_extractor(kept: KeptBody, variants: tuple[str, ...], layer: str | None = None) -> "FeatureExtractor":
    """The `FeatureExtractor` of a kept body (or of its part up to `layer`), traced once and kept with it."""
    variants = tuple(sorted(variants))
    with kept.lock:
        found = kept.extractors.get((variants, layer))
        if found is None:
            body = kept.body if layer is None else lower_body(kept.body, layer)
            found = kept.extractors[(variants, layer)] = FeatureExtractor(body, kept.config, variants)
    return found


def lower_body(body, layer: str):
    """The part of a body up to `layer`'s output, sharing its layers."""
    return keras.Model(body.inputs, body.get_layer(layer).output, name=f"backbone_to_{layer}")


def features_for(
    kept: KeptBody,
    items: Sequence,
    variant: str,
    cache: FeatureCache,
    *,
    view_seed: int | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    in_use: set[str] | None = None,
    layer: str | None = None,
):
    """The features of `items` in one variant, read from the cache or computed now.

    Only images whose bytes were never seen under this key go through the backbone. The
    pooled variants are always stored too (they are small), and the whole map when it fits in
    a quarter of the cache, so a later run with another pooling reuses them.

    Args:
        kept: The frozen body (`frozen_body`).
        items: `tlcore.dataset.Item`s.
        variant: `"map"`, `"avg"` or `"max"` (see `tlcore.features.VARIANTS`).
        cache: The feature cache.
        view_seed: Features of the images augmented with this seed instead: one kept view.
            The augmentation of an image depends on its batch, so views are named by the
            whole ordered list of images as well.
        progress: See `Progress`.
        should_stop: Polled between batches; True raises `tlcore.errors.Stopped`.
        in_use: Names of shards in use, never evicted; the shards read here are added.
        layer: Features of this earlier layer of the body instead of its output, as float32
            maps (`"map32"`): the input of a fine-tuning stage.

    Returns:
        `Features`: a float32 array with one row per readable item (or `tlcore.features.Rows`
        read from disk when that would be too large for memory), and the items TensorFlow
        could not decode, which are left out rather than failing the training.
    """
    check_variant(variant)
    in_use = set() if in_use is None else in_use
    digests = [item_digest(item) for item in items]
    augmentation = None
    ids = digests
    if view_seed is not None:
        order = hashlib.sha256("\n".join(digests).encode()).hexdigest()
        augmentation = {"version": AUGMENTATION_VERSION, "seed": int(view_seed), "images": order}
        ids = [f"{index}:{digest}" for index, digest in enumerate(digests)]
    if layer is not None:
        map_shape = tuple(int(v) for v in kept.body.get_layer(layer).output.shape[1:])
        stored = {MAP32}
    else:
        map_shape = kept.feature_shape
        map_bytes = len(items) * math.prod(map_shape) * np.dtype(FEATURE_DTYPE).itemsize
        stored = {variant, *POOLED}
        if map_bytes <= cache.max_bytes // 4 and view_seed is None:
            stored.add(MAP)
    extractor = cached_extractor(kept, tuple(stored), layer)
    store = cache.store(extraction_key(kept, extractor, augmentation, layer))
    located = store.locate(ids, variant)
    missing = located.missing
    total = len(ids)
    if progress is not None:
        progress(total - len(missing), total, not missing)
    if missing:
        first = {}
        for image_id, item in zip(ids, items):
            first.setdefault(image_id, item)
        todo = [first[image_id] for image_id in missing]
        shapes = {v: (map_shape if v in (MAP, MAP32) else map_shape[-1:]) for v in stored}
        writer = store.writer(missing, shapes)
        augment = augmenter(view_seed) if view_seed is not None else None
        done, read = 0, []
        try:
            for images, indices in readable_image_batches(todo, kept.config.input_size, EXTRACTION_BATCH, augment=augment):
                if should_stop is not None and should_stop():
                    raise Stopped()
                writer.write(extractor(images))
                read += indices.numpy().tolist()
                done = read[-1] + 1
                if progress is not None:
                    progress(total - len(missing) + done, total, False)
        except BaseException:
            writer.abort()
            raise
        if read:
            writer.commit(keep=in_use, ids=[missing[index] for index in read])
        else:
            writer.abort()
        located = store.locate(ids, variant)
    located.touch()
    in_use.update(located.shard_names)
    unreadable_ids = set(located.missing)
    unreadable = tuple(item for image_id, item in zip(ids, items) if image_id in unreadable_ids)
    readable = [image_id for image_id in ids if image_id not in unreadable_ids]
    rows = store.locate(readable, variant).rows() if readable else np.zeros((0, *(
        map_shape if variant in (MAP, MAP32) else map_shape[-1:])), dtype=np.float32)
    return Features(rows, unreadable)


def item_digest(item) -> str:
    """An item's content digest; computed from the file for a bare `(path, label)` pair."""
    digest = getattr(item, "digest", None)
    if digest:
        return digest
    with open(item[0], "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class FeatureExtractor:
    """Runs the frozen body over batches of resized raw images and returns the features asked for.

    The body runs with batch normalisation folded into its convolutions when that gives the
    same features (checked on random images when built), which is markedly faster on a CPU.
    The preprocessing is the saved model's own (`tlcore.model.preprocessing_layers`).

    Args:
        body: The frozen body from `tlcore.model.build_body`.
        config: The model settings (backbone and input size).
        variants: Which of `tlcore.features.VARIANTS` to return.
        map_dtype: Dtype of the returned feature maps; float16 halves the copy out of TensorFlow.
        fold: Set False to run the body exactly as Keras does.
    """

    def __init__(self, body, config: ModelConfig, variants=(MAP,), map_dtype: str = "float16", fold: bool = True):
        import tensorflow as tf

        config = config.resolved()
        self.variants = tuple(variants)
        backbone = config.backbone
        forward = folded_forward(body) if fold else None
        if forward is not None and not _same_features(forward, body, backbone, config.input_size):
            forward = None
        self.folded = forward is not None
        forward = forward or (lambda images: body(images, training=False))
        size = config.input_size
        variants = self.variants

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
        def extract(images):
            maps = forward(preprocess(backbone, images))
            outputs = {}
            if MAP in variants:
                outputs[MAP] = tf.cast(maps, map_dtype)
            if MAP32 in variants:
                outputs[MAP32] = tf.cast(maps, tf.float32)
            if "avg" in variants:
                outputs["avg"] = tf.reduce_mean(maps, axis=[1, 2])
            if "max" in variants:
                outputs["max"] = tf.reduce_max(maps, axis=[1, 2])
            return outputs

        self._extract = extract

    def tensors(self, images) -> dict:
        """The features of a batch as TensorFlow tensors, without copying them out (float32 input, 0-255)."""
        return self._extract(images)

    def __call__(self, images) -> dict[str, np.ndarray]:
        import tensorflow as tf

        images = tf.cast(tf.convert_to_tensor(images), tf.float32)
        return {name: value.numpy() for name, value in self._extract(images).items()}


def _same_features(forward, body, backbone: str, size: int) -> bool:
    import tensorflow as tf

    images = preprocess(backbone, tf.random.stateless_uniform((2, size, size, 3), seed=(1, 2), maxval=255.0))
    try:
        ours = np.asarray(forward(images))
    except Exception:  # noqa: BLE001  (an unforeseen layer: fall back to the body as it is)
        return False
    theirs = np.asarray(body(images, training=False))
    scale = max(1.0, float(np.abs(theirs).max()))
    return ours.shape == theirs.shape and bool(np.allclose(ours, theirs, rtol=1e-3, atol=1e-3 * scale))



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
