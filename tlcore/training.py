"""Training jobs: run in a background thread, report plain events, stop on request."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from tlcore import runs
from tlcore.errors import ModelConfigError, TransferLabError
from tlcore.features import (
    FEATURE_DTYPE,
    MAP,
    POOLED,
    POOLED_DTYPE,
    FeatureCache,
    feature_key,
    folded_forward,
    pool,
    training_array,
    variant_key,
)
from tlcore.images import decode_file
from tlcore.model import ModelConfig, assemble, build_body, build_head, check_num_classes

OPTIMIZERS = ("rmsprop", "adam", "sgd")
PHASE_LOADING = "loading data"
PHASE_EXTRACTING = "extracting features"
PHASE_TRAINING = "training"
PHASE_SAVING = "saving"

# Images per backbone call while extracting. Small batches keep a MobileNet's activations in
# the CPU caches and measured fastest on a 2-core machine (see docs/performance.md).
EXTRACTION_BATCH = 8
# Heads this small run this many training steps per call into TensorFlow, which saves the
# per-step Python overhead that otherwise dominates; larger heads run one step per call so
# that a stop request is honoured quickly.
STEPS_PER_EXECUTION = 16
SMALL_HEAD_PARAMETERS = 1_000_000
# Validation batches hold this many images at least: fewer calls, same metrics.
VALIDATION_BATCH = 256
MAX_AUGMENTED_VIEWS = 20
# Bump when `augmenter` changes, so cached augmented views are made again.
AUGMENTATION_VERSION = 1
# Frozen bodies kept ready in this process, so training again skips loading the weights.
CACHED_BODIES = 2


@dataclass(frozen=True)
class TrainConfig:
    """What the user chose on the Train page; every field maps to one widget."""

    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 0.001
    optimizer: str = "adam"
    augment: bool = False
    early_stopping: bool = False
    patience: int = 3
    val_split: float = 0.2
    seed: int = 0
    augment_views: int = 0
    """With `augment`: 0 augments afresh every epoch, so the backbone runs over every image in
    every epoch; N > 0 extracts N augmented views of each training image once (cached like
    other features) and the epochs cycle through them, which is several times faster."""

    def resolved(self) -> "TrainConfig":
        """Returns a checked copy.

        Raises:
            ModelConfigError: a setting out of range, in a sentence saying why.
        """
        optimizer = str(self.optimizer).lower()
        if optimizer not in OPTIMIZERS:
            raise ModelConfigError(
                f"Unknown optimizer `{self.optimizer}`. Choose one of: {', '.join(OPTIMIZERS)}."
            )
        if int(self.epochs) < 1:
            raise ModelConfigError("Train for at least 1 epoch.")
        if int(self.batch_size) < 1:
            raise ModelConfigError("The batch size must be at least 1.")
        if not 0 <= int(self.augment_views) <= MAX_AUGMENTED_VIEWS:
            raise ModelConfigError(
                f"The number of augmented views must be between 0 and {MAX_AUGMENTED_VIEWS}, got {self.augment_views}."
            )
        rate = float(self.learning_rate)
        if not (0 < rate < 10) or math.isnan(rate):
            raise ModelConfigError(
                f"The learning rate must be a small positive number such as 0.001, got {self.learning_rate}."
            )
        return dataclasses.replace(
            self,
            epochs=int(self.epochs),
            batch_size=int(self.batch_size),
            learning_rate=rate,
            optimizer=optimizer,
            augment=bool(self.augment),
            early_stopping=bool(self.early_stopping),
            patience=max(1, int(self.patience)),
            val_split=float(self.val_split),
            seed=int(self.seed),
            augment_views=int(self.augment_views),
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class _Stopped(Exception):
    """Raised inside the worker when the user asked to stop before training began."""


def make_optimizer(config: TrainConfig):
    return {
        "rmsprop": keras.optimizers.RMSprop,
        "adam": keras.optimizers.Adam,
        "sgd": keras.optimizers.SGD,
    }[config.optimizer](learning_rate=config.learning_rate)


def compile_for(model, num_classes: int, config: TrainConfig, steps_per_execution: int = 1) -> None:
    loss = "binary_crossentropy" if num_classes == 2 else "sparse_categorical_crossentropy"
    model.compile(
        optimizer=make_optimizer(config), loss=loss, metrics=["accuracy"], steps_per_execution=steps_per_execution
    )


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


def image_dataset(items, input_size: int, batch_size: int, *, shuffle_seed: int | None = None, augment=None):
    """Streams `(image, label)` batches from disk: decode, resize, batch, prefetch.

    Images stay raw RGB (0-255, float32) because the model resizes and preprocesses inside.
    `augment`, a Keras layer, is applied to these batches only: pass it for training data,
    never for validation.
    """
    import tensorflow as tf

    paths = [str(p) for p, _ in items]
    labels = np.asarray([label for _, label in items], dtype="int32")
    data = tf.data.Dataset.from_tensor_slices((paths, labels))
    if shuffle_seed is not None:
        data = data.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)

    data = data.map(lambda path, label: (decode_file(path, input_size), label), num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    if augment is not None:
        data = data.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(tf.data.AUTOTUNE)


def feature_batches(features, labels, batch_size: int, seed: int | None):
    """Batches of cached features for `fit`, reshuffled every epoch when `seed` is given.

    Features in memory go through `tf.data`, which shuffles and batches without a Python call
    per batch, in the same order as `image_dataset` gives the images; features read from disk
    go through `FeatureBatches`.
    """
    import tensorflow as tf

    if not isinstance(features, np.ndarray):
        return FeatureBatches(features, labels, batch_size, seed)
    data = tf.data.Dataset.from_tensor_slices((features, labels))
    if seed is not None:
        data = data.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


class FeatureBatches(keras.utils.PyDataset):
    """Keras-ready batches of cached features, reshuffled every epoch with a fixed seed."""

    def __init__(self, features, labels, batch_size: int, seed: int | None):
        super().__init__()
        self.features, self.labels, self.batch_size, self.seed = features, labels, batch_size, seed
        self.rng = np.random.default_rng(seed)
        self.order = np.arange(len(labels))
        if seed is not None:
            self.rng.shuffle(self.order)

    def __len__(self):
        return math.ceil(len(self.labels) / self.batch_size)

    def __getitem__(self, index):
        # Sorted indices read features on disk in file order.
        picked = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        return np.asarray(self.features[picked], dtype="float32"), self.labels[picked]

    def on_epoch_end(self):
        if self.seed is not None:
            self.rng.shuffle(self.order)


class ViewBatches(FeatureBatches):
    """`FeatureBatches` over several augmented views of the same images: epoch e reads view e mod N."""

    def __init__(self, views, labels, batch_size: int, seed: int | None):
        super().__init__(views[0], labels, batch_size, seed)
        self.views = list(views)
        self.epoch = 0

    def on_epoch_end(self):
        super().on_epoch_end()
        self.epoch += 1
        self.features = self.views[self.epoch % len(self.views)]


@dataclass
class JobState:
    """A snapshot of a job, safe to read from any thread."""

    status: str = runs.QUEUED
    phase: str = ""
    message: str = ""
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    eta_seconds: float | None = None
    history: dict = field(default_factory=dict)
    phase_seconds: dict = field(default_factory=dict)
    classes: tuple[str, ...] = ()
    started: float | None = None
    ended: float | None = None

    @property
    def done(self) -> bool:
        return self.status in (runs.FINISHED, runs.STOPPED, runs.FAILED)

    @property
    def seconds(self) -> float:
        if self.started is None:
            return 0.0
        return (self.ended or time.time()) - self.started

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["classes"] = list(self.classes)
        data["seconds"] = round(self.seconds, 3)
        return data


class TrainingJob:
    """One training, run in a background thread and observed through events.

    Args:
        data: A dataset folder or zip path, or a loaded `Dataset`.
        model_config: Backbone, cut and head settings.
        train_config: Optimiser, epochs and the rest.
        runs_dir: Where the run folder is created.
        work_dir: Where extracted datasets and cached features are kept.
        on_event: Optional callable given every event as it happens (from the worker thread).
    """

    def __init__(
        self,
        data,
        model_config: ModelConfig | None = None,
        train_config: TrainConfig | None = None,
        runs_dir: str | Path | None = None,
        work_dir: str | Path | None = None,
        on_event=None,
    ):
        self.model_config = (model_config or ModelConfig()).resolved()
        self.train_config = (train_config or TrainConfig()).resolved()
        self.data = data
        self.work_dir = Path(work_dir) if work_dir is not None else _default_work_dir()
        self.on_event = on_event
        self.run_dir = runs.new_run_dir(
            runs_dir if runs_dir is not None else runs.default_runs_dir(),
            f"{self.model_config.backbone}-{self.model_config.cut_layer}",
        )
        self.state = JobState(epochs=self.train_config.epochs)
        self._events: list[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._config_json = {
            "model": self.model_config.to_dict(),
            "train": self.train_config.to_dict(),
            "data": {"source": str(getattr(data, "root", data))},
            "created": runs.now_iso(),
        }
        runs.write_json(self.run_dir / runs.CONFIG_FILE, self._config_json)
        runs.mark_live(self.run_dir, True)
        runs.write_status(self.run_dir, runs.QUEUED)

    # Observing -----------------------------------------------------------------------------

    def events(self, since: int = 0) -> list[dict]:
        """Events from index `since` on; poll with the length of what you already have."""
        with self._lock:
            return list(self._events[since:])

    def snapshot(self) -> JobState:
        with self._lock:
            return dataclasses.replace(
                self.state,
                history={k: list(v) for k, v in self.state.history.items()},
                phase_seconds=dict(self.state.phase_seconds),
            )

    @property
    def status(self) -> str:
        return self.state.status

    def _emit(self, kind: str, **payload) -> None:
        event = {"type": kind, "time": time.time(), **payload}
        with self._lock:
            self._events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    def _set(self, **changes) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self.state, key, value)

    # Control -------------------------------------------------------------------------------

    def start(self) -> "TrainingJob":
        self._thread = threading.Thread(target=self.run, name=f"train-{self.run_dir.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Asks the job to stop after the current batch; the model trained so far is kept."""
        self._stop.set()
        self._emit("stop_requested")

    def cancel(self) -> None:
        """Ends a job that never started, keeping its run folder as a record."""
        self._stop.set()
        self._finish(runs.STOPPED, "Cancelled before it started.")

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def wait(self, timeout: float | None = None) -> JobState:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.snapshot()

    # Work ----------------------------------------------------------------------------------

    def run(self) -> JobState:
        """Runs the whole job in the calling thread; `start()` runs it in a new one."""
        self._set(status=runs.RUNNING, started=time.time())
        runs.write_status(self.run_dir, runs.RUNNING)
        self._emit("status", status=runs.RUNNING)
        self._head = None
        self._last_good_weights = None
        self._keep: set[str] = set()
        self._body_nonce = uuid.uuid4().hex
        try:
            self._work()
            status = runs.STOPPED if self._stop.is_set() else runs.FINISHED
            message = "Stopped by the user; the model trained so far is saved." if status == runs.STOPPED else ""
            self._finish(status, message)
        except _Stopped:
            self._finish(runs.STOPPED, "Stopped by the user before training began; no model was saved.")
        except BaseException as error:  # noqa: BLE001  (the job must always end with a status)
            message = explain_failure(error)
            saved = self._save_partial()
            if saved:
                message += " The model from the last completed epoch is saved."
            self._finish(runs.FAILED, message)
        return self.snapshot()

    def _finish(self, status: str, message: str) -> None:
        self._set(status=status, message=message, ended=time.time(), phase="", eta_seconds=None)
        state = self.snapshot()
        runs.write_status(self.run_dir, status, message, phases=state.phase_seconds, seconds=round(state.seconds, 3))
        runs.mark_live(self.run_dir, False)
        self._emit("status", status=status, message=message)

    def _phase(self, name: str):
        job = self

        class Phase:
            def __enter__(self):
                self.start = time.perf_counter()
                job._set(phase=name, step=0, steps=0, eta_seconds=None)
                job._emit("phase", phase=name)
                runs.write_status(job.run_dir, runs.RUNNING, phase=name)

            def __exit__(self, *exc):
                elapsed = time.perf_counter() - self.start
                with job._lock:
                    job.state.phase_seconds[name] = round(job.state.phase_seconds.get(name, 0.0) + elapsed, 3)
                return False

        return Phase()

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise _Stopped()

    def _work(self) -> None:
        with self._phase(PHASE_LOADING):
            dataset = self._load_dataset()
        classes = dataset.classes
        num_classes = check_num_classes(len(classes))
        self._set(classes=tuple(classes))
        self._config_json["data"].update(
            root=str(dataset.root), classes=list(classes), counts=dataset.counts(), presplit=dataset.presplit
        )
        runs.write_json(self.run_dir / runs.CONFIG_FILE, self._config_json)
        runs.write_json(self.run_dir / runs.LABELS_FILE, list(classes))
        runs.write_json(
            self.run_dir / runs.SPLIT_FILE,
            {
                "classes": list(classes),
                "train": [[str(p), int(y)] for p, y in dataset.train],
                "validation": [[str(p), int(y)] for p, y in dataset.validation],
            },
        )
        if not dataset.train or not dataset.validation:
            raise TransferLabError(
                "Training needs images in both the training and the validation split; "
                "add more images to each class."
            )
        self._check_stop()
        body = cached_body(self.model_config)
        self._check_stop()
        # Seeded here, after everything that may draw random numbers (the first build of an
        # architecture, loading weights), so the same seed always gives the same head.
        keras.utils.set_random_seed(self.train_config.seed)
        if self.train_config.augment and not self.train_config.augment_views:
            model = self._train_end_to_end(body, dataset, num_classes)
        else:
            model = self._train_on_features(body, dataset, num_classes)
        with self._phase(PHASE_SAVING):
            model.save(self.run_dir / runs.MODEL_FILE)

    def _load_dataset(self):
        from tlcore import dataset as datasets

        if isinstance(self.data, datasets.Dataset):
            return self.data
        return datasets.load_dataset(
            self.data, val_split=self.train_config.val_split, seed=self.train_config.seed, work_dir=self.work_dir
        )

    # The fast path: one backbone pass per image, then the head alone trains on the features.
    def _train_on_features(self, body, dataset, num_classes: int):
        head = build_head(body.output.shape[1:], num_classes, self.model_config)
        # An average- or max-pooling head trains on features pooled once at extraction: the
        # pooling has no weights, and pooled features are 49 times smaller for a 7x7 map.
        trainable = head_after_pooling(head)
        variant = MAP if trainable is None else self.model_config.pooling
        trainable = trainable or head
        views = self.train_config.augment_views if self.train_config.augment else 0
        with self._phase(PHASE_EXTRACTING):
            if views:
                train_x = [self._features(body, dataset.train, f"train, view {v + 1}", variant, view=v) for v in range(views)]
            else:
                train_x = self._features(body, dataset.train, "train", variant)
            val_x = self._features(body, dataset.validation, "validation", variant)
        train_y = np.asarray([y for _, y in dataset.train], dtype="int32")
        val_y = np.asarray([y for _, y in dataset.validation], dtype="int32")
        self._head = (head, body)
        small = head.count_params() <= SMALL_HEAD_PARAMETERS
        compile_for(trainable, num_classes, self.train_config, steps_per_execution=STEPS_PER_EXECUTION if small else 1)
        seed, batch = self.train_config.seed, self.train_config.batch_size
        with self._phase(PHASE_TRAINING):
            if views:
                train = ViewBatches([training_array(x) for x in train_x], train_y, batch, seed)
            else:
                train = feature_batches(training_array(train_x), train_y, batch, seed)
            self._fit(trainable, train, feature_batches(training_array(val_x), val_y, max(batch, VALIDATION_BATCH), None))
        return assemble(body, head, self.model_config)

    def _train_end_to_end(self, body, dataset, num_classes: int):
        config = self.model_config
        head = build_head(body.output.shape[1:], num_classes, config)
        self._head = (head, body)
        model = assemble(body, head, config)
        compile_for(model, num_classes, self.train_config)
        size, batch = config.input_size, self.train_config.batch_size
        train = image_dataset(
            dataset.train, size, batch, shuffle_seed=self.train_config.seed, augment=augmenter(self.train_config.seed)
        )
        validation = image_dataset(dataset.validation, size, batch)
        with self._phase(PHASE_TRAINING):
            self._fit(model, train, validation)
        return model

    def _feature_model_key(self) -> dict:
        key = self.model_config.feature_key()
        if key["weights"] == "none":
            # Random weights differ from one build to the next: never reuse their features.
            key["body"] = self._body_nonce
        elif key["weights"] != "imagenet":
            # A weights file of the user's may be replaced under the same name.
            identity = _weights_identity(self.model_config)
            key["weights_file"] = identity[1:] if identity else None
        return key

    def _features(self, body, items, split: str, variant: str = MAP, view: int | None = None):
        """The features of `items` in one variant (see `tlcore.features.VARIANTS`), from the cache or extracted now.

        Extraction stores the pooled variants too (they are small), and the whole map when
        it fits in a quarter of the cache, so a later run with another pooling reuses them.
        With `view`, the features are of the images augmented as that view prescribes.
        """
        paths = [str(p) for p, _ in items]
        cache = FeatureCache(self.work_dir / "features")
        model_key = self._feature_model_key()
        augment = None
        if view is not None:
            # Each view has its own seed, so it is the same whichever other views exist.
            view_seed = self.train_config.seed + 1000 * (view + 1)
            model_key["augmentation"] = {"version": AUGMENTATION_VERSION, "seed": view_seed}
            augment = augmenter(view_seed)
        key = feature_key(model_key, paths)
        self._keep.update(variant_key(key, v) for v in (MAP, *POOLED))
        cached = cache.get(variant_key(key, variant))
        if cached is not None and len(cached) == len(paths):
            self._emit("progress", phase=PHASE_EXTRACTING, split=split, done=len(paths), total=len(paths), cached=True)
            return cached
        map_shape = tuple(int(v) for v in body.output.shape[1:])
        if variant in POOLED:
            maps = cache.get(key)
            if maps is not None and len(maps) == len(paths) and maps.shape[1:] == map_shape:
                self._emit("progress", phase=PHASE_EXTRACTING, split=split, done=len(paths), total=len(paths), cached=True)
                return self._pool_cached(cache, key, maps, variant)
        store = {variant, *POOLED}
        map_bytes = len(paths) * math.prod(map_shape) * np.dtype(FEATURE_DTYPE).itemsize
        if map_bytes <= cache.max_bytes // 4 and view is None:
            store.add(MAP)
        shapes = {v: (len(paths), *(map_shape if v == MAP else map_shape[-1:])) for v in store}
        writers = {
            v: cache.create(variant_key(key, v), shapes[v], FEATURE_DTYPE if v == MAP else POOLED_DTYPE) for v in sorted(store)
        }
        started = time.perf_counter()
        done = 0
        try:
            extractor = cached_extractor(body, self.model_config, tuple(sorted(store)))
            for images, _ in image_dataset(items, self.model_config.input_size, EXTRACTION_BATCH, augment=augment):
                self._check_stop()
                outputs = extractor(images)
                for name, writer in writers.items():
                    writer.write(outputs[name])
                done += len(images)
                elapsed = time.perf_counter() - started
                eta = elapsed / done * (len(paths) - done)
                self._set(step=done, steps=len(paths), eta_seconds=eta)
                self._emit("progress", phase=PHASE_EXTRACTING, split=split, done=done, total=len(paths), eta=eta)
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
        stored = {name: writer.commit(keep=self._keep) for name, writer in writers.items()}
        return stored[variant]

    def _pool_cached(self, cache: FeatureCache, key: str, maps, variant: str):
        """Pools cached feature maps in chunks, without running the backbone again."""
        writer = cache.create(variant_key(key, variant), (len(maps), maps.shape[-1]), POOLED_DTYPE)
        try:
            for start in range(0, len(maps), 256):
                writer.write(pool(maps[start : start + 256], variant))
        except BaseException:
            writer.abort()
            raise
        return writer.commit(keep=self._keep)

    def _fit(self, model, train, validation) -> None:
        callbacks = [JobCallback(self)]
        if self.train_config.early_stopping:
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor="val_loss", patience=self.train_config.patience, restore_best_weights=True
                )
            )
        model.fit(train, validation_data=validation, epochs=self.train_config.epochs, callbacks=callbacks, verbose=0)

    def _record_epoch(self, epoch: int, logs: dict, seconds: float) -> None:
        metrics = {k: float(v) for k, v in (logs or {}).items() if k in ("loss", "accuracy", "val_loss", "val_accuracy")}
        if any(math.isnan(v) or math.isinf(v) for v in metrics.values()):
            raise FloatingPointError("nan loss")
        with self._lock:
            for key, value in metrics.items():
                self.state.history.setdefault(key, []).append(value)
            self.state.history.setdefault("epoch_seconds", []).append(round(seconds, 3))
            self.state.epoch = epoch + 1
            history = {k: list(v) for k, v in self.state.history.items()}
        runs.write_json(self.run_dir / runs.HISTORY_FILE, history)
        self._last_good_weights = self._head[0].get_weights() if self._head else None
        self._emit("epoch", epoch=epoch + 1, metrics=metrics, seconds=round(seconds, 3))

    def _save_partial(self) -> bool:
        """After a failure, saves the model as of the last completed epoch, if there is one."""
        if not self._head or self._last_good_weights is None:
            return False
        try:
            head, body = self._head
            head.set_weights(self._last_good_weights)
            assemble(body, head, self.model_config).save(self.run_dir / runs.MODEL_FILE)
            return True
        except Exception:  # noqa: BLE001  (a failed rescue must not hide the first failure)
            return False


def feature_extractor(body, config: ModelConfig):
    """A compiled function from resized raw images to the cut layer's features.

    It applies the same resize and preprocessing layers as the saved model, so the head sees
    exactly what it will see inside the assembled model.
    """
    extractor = FeatureExtractor(body, config, (MAP,), map_dtype="float32")
    return lambda images: extractor(images)[MAP]


class FeatureExtractor:
    """Runs the frozen body over batches of resized raw images and returns the features asked for.

    The body runs with batch normalisation folded into its convolutions when that gives the
    same features (checked on random images when built), which is markedly faster on a CPU.

    Args:
        body: The frozen body from `tlcore.model.build_body`.
        config: The model settings (backbone and input size).
        variants: Which of `tlcore.features.VARIANTS` to return.
        map_dtype: Dtype of the returned feature maps; float16 halves the copy out of TensorFlow.
        fold: Set False to run the body exactly as Keras does.
    """

    def __init__(self, body, config: ModelConfig, variants=(MAP,), map_dtype: str = "float16", fold: bool = True):
        import tensorflow as tf

        from tlcore.model import BackbonePreprocess

        config = config.resolved()
        self.variants = tuple(variants)
        preprocess = BackbonePreprocess(config.backbone)
        forward = folded_forward(body) if fold else None
        if forward is not None and not _same_features(forward, body, preprocess, config.input_size):
            forward = None
        self.folded = forward is not None
        forward = forward or (lambda images: body(images, training=False))
        size = config.input_size
        variants = self.variants

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
        def extract(images):
            maps = forward(preprocess(images))
            outputs = {}
            if MAP in variants:
                outputs[MAP] = tf.cast(maps, map_dtype)
            if "avg" in variants:
                outputs["avg"] = tf.reduce_mean(maps, axis=[1, 2])
            if "max" in variants:
                outputs["max"] = tf.reduce_max(maps, axis=[1, 2])
            return outputs

        self._extract = extract

    def __call__(self, images) -> dict[str, np.ndarray]:
        import tensorflow as tf

        images = tf.cast(tf.convert_to_tensor(images), tf.float32)
        return {name: value.numpy() for name, value in self._extract(images).items()}


def _same_features(forward, body, preprocess, size: int) -> bool:
    import tensorflow as tf

    images = preprocess(tf.random.stateless_uniform((2, size, size, 3), seed=(1, 2), maxval=255.0))
    try:
        ours = np.asarray(forward(images))
    except Exception:  # noqa: BLE001  (an unforeseen layer: fall back to the body as it is)
        return False
    theirs = np.asarray(body(images, training=False))
    scale = max(1.0, float(np.abs(theirs).max()))
    return ours.shape == theirs.shape and bool(np.allclose(ours, theirs, rtol=1e-3, atol=1e-3 * scale))


_BODIES: OrderedDict[str, dict] = OrderedDict()
_BODIES_LOCK = threading.Lock()


def _weights_identity(config: ModelConfig):
    """The weights file a body would load, as [path, size, mtime], or None when unknown or random."""
    from tlcore.backbones import find_cached_weights, get_backbone

    if config.weights == "none":
        return None
    if config.weights == "imagenet":
        path = find_cached_weights(get_backbone(config.backbone), config.alpha, config.input_size)
    else:
        path = config.weights
    try:
        stat = os.stat(path) if path is not None else None
    except OSError:
        return None
    return None if stat is None else [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]


def cached_body(config: ModelConfig):
    """`build_body`, kept for the next training of the same backbone, cut and weights in this process.

    Bodies with random weights are never kept: each build draws new ones.
    """
    config = config.resolved()
    identity = _weights_identity(config)
    if identity is None:
        return build_body(config)
    key = json.dumps([config.feature_key(), identity], sort_keys=True)
    with _BODIES_LOCK:
        entry = _BODIES.get(key)
        if entry is not None:
            _BODIES.move_to_end(key)
            return entry["body"]
    body = build_body(config)
    with _BODIES_LOCK:
        _BODIES[key] = {"body": body, "extractors": {}}
        while len(_BODIES) > CACHED_BODIES:
            _BODIES.popitem(last=False)
    return body


def cached_extractor(body, config: ModelConfig, variants: tuple[str, ...]) -> FeatureExtractor:
    """The `FeatureExtractor` of a body from `cached_body`, traced once and kept with it."""
    with _BODIES_LOCK:
        entry = next((e for e in _BODIES.values() if e["body"] is body), None)
        found = entry["extractors"].get(variants) if entry else None
    if found is not None:
        return found
    extractor = FeatureExtractor(body, config, variants)
    if entry is not None:
        with _BODIES_LOCK:
            entry["extractors"][variants] = extractor
    return extractor


def forget_bodies() -> None:
    """Drops the kept bodies and their extractors, freeing their memory."""
    with _BODIES_LOCK:
        _BODIES.clear()


def head_after_pooling(head):
    """The part of a pooling head after its pooling layer, sharing its layers, or None.

    Training it on pooled features trains the head itself.
    """
    layers = head.layers
    if len(layers) < 3 or not isinstance(layers[1], (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)):
        return None
    if not all(isinstance(layer, (keras.layers.Dense, keras.layers.Dropout)) for layer in layers[2:]):
        return None
    inputs = keras.Input(shape=(int(head.input.shape[-1]),), name="pooled_features")
    x = inputs
    for layer in layers[2:]:
        x = layer(x)
    return keras.Model(inputs, x, name="head_after_pooling")


class JobCallback(keras.callbacks.Callback):
    """Feeds progress into the job and honours a stop request after the current batch."""

    def __init__(self, job: TrainingJob):
        super().__init__()
        self.job = job
        self.epoch_start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.perf_counter()
        self.job._set(epoch=epoch, step=0, steps=self.params.get("steps") or 0, eta_seconds=None)
        if self.job.stop_requested:
            self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        steps = self.params.get("steps") or 0
        elapsed = time.perf_counter() - self.epoch_start
        eta = elapsed / (batch + 1) * max(steps - batch - 1, 0) if steps else None
        self.job._set(step=batch + 1, steps=steps, eta_seconds=eta)
        self.job._emit("progress", phase=PHASE_TRAINING, epoch=self.job.state.epoch + 1, done=batch + 1, total=steps, eta=eta)
        if self.job.stop_requested:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self.job._record_epoch(epoch, logs, time.perf_counter() - self.epoch_start)


def explain_failure(error: BaseException) -> str:
    """Turns an exception from inside training into a sentence a user can act on."""
    if isinstance(error, TransferLabError):
        return str(error)
    if isinstance(error, FloatingPointError):
        return (
            "Training failed: the loss became NaN (not a number), which usually means the "
            "learning rate is too high. Try a learning rate 10 times smaller."
        )
    name = type(error).__name__
    text = str(error).strip().splitlines()[0][:300] if str(error).strip() else name
    if isinstance(error, MemoryError) or name == "ResourceExhaustedError":
        return (
            "Training failed: the computer ran out of memory. Try a smaller batch size, a smaller "
            "input size, or global average pooling instead of Flatten."
        )
    if name == "InvalidArgumentError" and "decode" in text.lower():
        return f"Training failed: an image could not be decoded ({text}). Remove it and try again."
    return f"Training failed: {name}: {text}"


def _default_work_dir() -> Path:
    from tlcore import dataset as datasets

    finder = getattr(datasets, "default_work_dir", None)
    return Path(finder()) if finder else Path.home() / ".tlcore"


def train(data, model_config=None, train_config=None, runs_dir=None, work_dir=None, on_event=None) -> TrainingJob:
    """Trains in the calling thread and returns the finished job (see `TrainingJob`)."""
    job = TrainingJob(data, model_config, train_config, runs_dir, work_dir, on_event)
    job.run()
    return job


def result_dict(job: TrainingJob) -> dict:
    """What `python -m tlcore train --json` prints."""
    state = job.snapshot()
    return {
        "run_dir": str(job.run_dir),
        "status": state.status,
        "message": state.message,
        "classes": list(state.classes),
        "history": {k: state.history.get(k, []) for k in ("loss", "accuracy", "val_loss", "val_accuracy")},
        "seconds": round(state.seconds, 3),
        "phase_seconds": state.phase_seconds,
    }
