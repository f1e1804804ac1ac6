"""What `fit` reads: image batches streamed from disk, cached feature batches, augmentation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np

from tlcore.images import decode_file

# Bump when `augmenter` changes, so cached augmented views are made again.
AUGMENTATION_VERSION = 1


def augmenter(seed: int):
    """Random flips, rotations, zooms and shifts, as in the classic lab; training images only."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(0.1, fill_mode="nearest", seed=seed + 1),
            keras.layers.RandomZoom(0.2, fill_mode="nearest", seed=seed + 2),
            keras.layers.RandomTranslation(0.2, 0.2, fill_mode="nearest", seed=seed + 3),
        ],
        name="augmentation",
    )


def _paths_and_labels(items) -> tuple[list[str], np.ndarray]:
    paths = [str(item[0]) for item in items]
    labels = np.asarray([int(item[1]) for item in items], dtype="int32")
    return paths, labels


def image_dataset(items: Sequence, input_size: int, batch_size: int, *, shuffle_seed: int | None = None, augment=None):
    """Streams `(image, label)` batches from disk: decode, resize, batch, prefetch.

    Images stay raw RGB (0-255, float32) because the model resizes and preprocesses inside.
    `augment`, a Keras layer, is applied to these batches only: pass it for training data,
    never for validation.

    Args:
        items: `tlcore.dataset.Item`s, or `(path, label)` pairs.
        input_size: Side images are resized to, as the model's own `Resizing` does.
        batch_size: Images per batch.
        shuffle_seed: Reshuffles every epoch with this seed; None keeps the order.
        augment: A Keras layer applied to each training batch, or None.
    """
    import tensorflow as tf

    paths, labels = _paths_and_labels(items)
    data = tf.data.Dataset.from_tensor_slices((paths, labels))
    if shuffle_seed is not None:
        data = data.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
    data = data.map(lambda path, label: (decode_file(path, input_size), label), num_parallel_calls=tf.data.AUTOTUNE)
    data = data.batch(batch_size)
    if augment is not None:
        data = data.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(tf.data.AUTOTUNE)


def readable_image_batches(items: Sequence, input_size: int, batch_size: int, *, augment=None):
    """`(images, indices)` batches of `items` in order, leaving out files TensorFlow cannot decode.

    The indices say which items each batch holds, so the images that could not be read are
    known by name, and nothing fails on them.
    """
    import tensorflow as tf

    paths, _ = _paths_and_labels(items)
    data = tf.data.Dataset.from_tensor_slices((paths, np.arange(len(paths), dtype="int64")))
    data = data.map(lambda path, index: (decode_file(path, input_size), index), num_parallel_calls=tf.data.AUTOTUNE)
    data = data.ignore_errors().batch(batch_size)
    if augment is not None:
        data = data.map(lambda x, i: (augment(x, training=True), i), num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(tf.data.AUTOTUNE)


def feature_batches(features, labels, batch_size: int, seed: int | None):
    """Batches of cached features for `fit`, reshuffled every epoch when `seed` is given.

    The batches hold the same images, epoch by epoch, as `image_dataset` with the same seed:
    `tf.data`'s shuffle orders elements by seed and count alone. Features in memory go through
    `tf.data` whole; rows on disk (`tlcore.features.Rows`) are read batch by batch.
    """
    import tensorflow as tf

    labels = np.asarray(labels, dtype="int32")
    if isinstance(features, np.ndarray):
        data = tf.data.Dataset.from_tensor_slices((features, labels))
        if seed is not None:
            data = data.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
        return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    indices = tf.data.Dataset.range(len(labels))
    if seed is not None:
        indices = indices.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    row_shape = tuple(features.shape[1:])

    def read(batch):
        # Sorted rows read a file in order; a batch's order does not matter to the step.
        picked = np.sort(batch)
        return np.asarray(features[picked], dtype="float32"), labels[picked]

    def load(batch):
        x, y = tf.numpy_function(read, [batch], [tf.float32, tf.int32])
        x.set_shape([None, *row_shape])
        y.set_shape([None])
        return x, y

    return indices.batch(batch_size).map(load).prefetch(tf.data.AUTOTUNE)


class FeatureBatches(keras.utils.PyDataset):
    """Keras-ready batches of cached features, reshuffled at the start of every epoch with a fixed seed.

    Each epoch's order is the one `tf.data`'s shuffle gives with the same seed, so batches hold
    the same images as `image_dataset` and `feature_batches` would give in that epoch.

    Args:
        features: An array, or rows read from disk when indexed (`tlcore.features.Rows`).
        labels: One label per row.
        batch_size: Rows per batch.
        seed: Seed of the shuffle; None keeps the order.
    """

    def __init__(self, features, labels, batch_size: int, seed: int | None):
        super().__init__()
        self.features, self.labels, self.batch_size, self.seed = features, np.asarray(labels), batch_size, seed
        self.order = np.arange(len(self.labels))
        self.epoch = -1
        self._shuffled = None

    def __len__(self):
        return math.ceil(len(self.labels) / self.batch_size)

    def __getitem__(self, index):
        # Sorted indices read features on disk in file order.
        picked = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        return np.asarray(self.features[picked], dtype="float32"), self.labels[picked]

    def on_epoch_begin(self):
        # Keras calls this once at the start of each epoch (and `on_epoch_end` once more, before
        # the first): counting it is how the epoch is known.
        self.epoch += 1
        if self.seed is not None:
            import tensorflow as tf

            count = len(self.labels)
            if self._shuffled is None:
                self._shuffled = tf.data.Dataset.range(count).shuffle(count, seed=self.seed, reshuffle_each_iteration=True)
            self.order = np.fromiter(self._shuffled.as_numpy_iterator(), dtype=np.int64, count=count)


class ViewBatches(FeatureBatches):
    """`FeatureBatches` over several augmented views of the same images: epoch e reads view e mod N."""

    def __init__(self, views, labels, batch_size: int, seed: int | None):
        super().__init__(views[0], labels, batch_size, seed)
        self.views = list(views)

    def on_epoch_begin(self):
        super().on_epoch_begin()
        self.features = self.views[self.epoch % len(self.views)]
