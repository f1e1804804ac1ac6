"""Training stages, one function each: the head on cached features, or the whole model on images.

A stage takes a `StageContext` (the data, the frozen body, the settings and the job's
callbacks), trains, and returns the assembled model to save. A new stage (fine-tuning the top
of the backbone, say) is one more function here and one more entry in `stages_for`.
"""

from __future__ import annotations

import os

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import keras
import numpy as np

from tlcore.config import ModelConfig, Phase, TrainConfig
from tlcore.extraction import KeptBody, features_for
from tlcore.features import MAP, MAP32, FeatureCache
from tlcore.inputs import ViewBatches, augmenter, feature_batches, image_dataset
from tlcore.model import assemble, build_head
from tlcore.training.callbacks import (
    BestEpochRecorder,
    Checkpoint,
    HistoryWriter,
    KeepBestOnStop,
    NanGuard,
    ProgressReporter,
    RescueWeights,
    StopOnRequest,
)
from tlcore.training.events import Progress

HEAD_ON_FEATURES = "head on features"
END_TO_END = "end to end"
FINE_TUNE = "fine-tune"
# Heads this small run this many training steps per call into TensorFlow, which saves the
# per-step Python overhead that otherwise dominates; larger heads run one step per call so
# that a stop request is honoured quickly.
STEPS_PER_EXECUTION = 16
# The model is saved to the run folder after an epoch at most this often, so a killed training keeps
# a recent one without slowing the quick trainings down.
CHECKPOINT_SECONDS = 10.0  # $TLCORE_CHECKPOINT_SECONDS overrides it
SMALL_HEAD_PARAMETERS = 1_000_000
# Validation batches hold this many images at least: fewer calls, same metrics.
VALIDATION_BATCH = 256
# Seeds of the kept augmented views: view v of seed s is the same whichever other views exist.
VIEW_SEED_STEP = 1000


@dataclass
class StageContext:
    """What a stage needs, and what it leaves for the job.

    Attributes:
        config: Resolved model settings.
        settings: Resolved training settings.
        dataset: The `tlcore.dataset.Dataset`.
        kept: The frozen body (`tlcore.extraction.frozen_body`).
        cache: The feature cache.
        job: The `TrainingJob`, for progress and stop requests.
        callbacks: Extra callbacks given to every `fit` after the job's own (tests inject faults here).
        in_use: Feature shards in use, never evicted meanwhile.
        rescue: Set by the stage: the weights to save if training fails midway.
        model: Set by the stage: the assembled model (what is saved).
        head: Set by the first stage: the head, which later stages go on training.
        train_items: Set by the first stage: the training images that could be read.
        val_items: Set by the first stage: the validation images that could be read.
    """

    config: ModelConfig
    settings: TrainConfig
    dataset: object
    kept: KeptBody
    cache: FeatureCache
    job: object
    callbacks: list = field(default_factory=list)
    in_use: set = field(default_factory=set)
    rescue: RescueWeights | None = None
    model: object = None
    head: object = None
    train_items: list = field(default_factory=list)
    val_items: list = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.dataset.classes)


Stage = Callable[[StageContext], object]


def stages_for(settings: TrainConfig) -> list[tuple[str, Stage]]:
    """The stages a training runs, in order, by name: the head, then fine-tuning the backbone's top if asked."""
    first = (END_TO_END, train_end_to_end) if settings.augment and not settings.augment_views else (
        HEAD_ON_FEATURES, train_head_on_features)
    return [first, (FINE_TUNE, train_fine_tune)] if settings.fine_tunes else [first]


def make_optimizer(settings: TrainConfig):
    return {
        "rmsprop": keras.optimizers.RMSprop,
        "adam": keras.optimizers.Adam,
        "sgd": keras.optimizers.SGD,
    }[settings.optimizer](learning_rate=settings.learning_rate)


def compile_for(model, num_classes: int, settings: TrainConfig, steps_per_execution: int = 1) -> None:
    loss = "binary_crossentropy" if num_classes == 2 else "sparse_categorical_crossentropy"
    model.compile(optimizer=make_optimizer(settings), loss=loss, metrics=["accuracy"], steps_per_execution=steps_per_execution)


def class_weights(labels, num_classes: int, mode: str) -> dict[int, float] | None:
    """Keras `class_weight` for `mode`: None for `"none"`; for `"balanced"`, n / (classes x count).

    With balanced weights every class adds the same total to the loss, however many images it has.
    """
    if mode == "none":
        return None
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    total = counts.sum()
    return {label: float(total / (num_classes * count)) if count else 0.0 for label, count in enumerate(counts)}


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


def checkpoint_seconds() -> float:
    value = os.environ.get("TLCORE_CHECKPOINT_SECONDS", "").strip()
    try:
        return max(0.0, float(value)) if value else CHECKPOINT_SECONDS
    except ValueError:
        raise ValueError(f"TLCORE_CHECKPOINT_SECONDS must be a number of seconds, not {value!r}") from None


def _fit(ctx: StageContext, model, train, validation, stage: str, train_items, *, epochs: int | None = None,
         initial_epoch: int = 0, phase: Phase = Phase.TRAINING, extra=()) -> None:
    # In this order: a NaN epoch is never recorded, and the rescue weights are those recorded.
    callbacks = [NanGuard(), HistoryWriter(ctx.job, stage), ctx.rescue, Checkpoint(ctx, checkpoint_seconds()),
                 StopOnRequest(ctx.job), ProgressReporter(ctx.job, phase), *extra, *ctx.callbacks]
    callbacks = [callback for callback in callbacks if callback is not None]
    settings = ctx.settings
    if settings.early_stopping:
        stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=settings.patience, restore_best_weights=True)
        callbacks += [stopper, BestEpochRecorder(ctx.job, stopper)]
    labels = [item.label for item in train_items]
    model.fit(
        train,
        validation_data=validation,
        epochs=settings.epochs if epochs is None else epochs,
        initial_epoch=initial_epoch,
        callbacks=callbacks,
        class_weight=class_weights(labels, ctx.num_classes, settings.class_weights),
        verbose=0,
    )


def train_head_on_features(ctx: StageContext):
    """The fast stage: the backbone runs once per image (features are cached), then the head alone trains.

    An average- or max-pooling head trains on features pooled once at extraction: the pooling
    has no weights, and pooled features are 49 times smaller for a 7x7 map. With kept augmented
    views, epoch e trains on view e mod N of the training images.
    """
    config, settings, dataset = ctx.config, ctx.settings, ctx.dataset
    body = ctx.kept.body
    head = build_head(body.output.shape[1:], ctx.num_classes, config)
    trainable = head_after_pooling(head)
    variant = MAP if trainable is None else config.pooling
    trainable = trainable or head
    views = settings.kept_views

    def features(items, split: str, view_seed=None):
        def progress(done, total, cached):
            ctx.job.update(step=done, steps=total)
            ctx.job.emit(Progress(phase=Phase.EXTRACTING, done=done, total=total, split=split, cached=cached))

        found = features_for(ctx.kept, items, variant, ctx.cache, view_seed=view_seed, progress=progress,
                             should_stop=lambda: ctx.job.stop_requested, in_use=ctx.in_use)
        ctx.job.note_unreadable(found.unreadable)
        return found

    with ctx.job.phase(Phase.EXTRACTING):
        if views:
            train_found = [features(dataset.train, f"train, view {v + 1}", settings.seed + VIEW_SEED_STEP * (v + 1))
                           for v in range(views)]
            train_items = train_found[0].keep(dataset.train)
            train_x = [found.rows for found in train_found]
        else:
            found = features(dataset.train, "train")
            train_items, train_x = found.keep(dataset.train), found.rows
        val_found = features(dataset.validation, "validation")
        val_items, val_x = val_found.keep(dataset.validation), val_found.rows
    check_left(train_items, val_items, ctx.num_classes)
    train_y = np.asarray([item.label for item in train_items], dtype="int32")
    val_y = np.asarray([item.label for item in val_items], dtype="int32")
    ctx.model = assemble(body, head, config)
    ctx.head, ctx.train_items, ctx.val_items = head, train_items, val_items
    ctx.rescue = RescueWeights(head)
    small = head.count_params() <= SMALL_HEAD_PARAMETERS
    compile_for(trainable, ctx.num_classes, settings, steps_per_execution=STEPS_PER_EXECUTION if small else 1)
    batch = settings.batch_size
    with ctx.job.phase(Phase.TRAINING):
        if views:
            train = ViewBatches(train_x, train_y, batch, settings.seed)
        else:
            train = feature_batches(train_x, train_y, batch, settings.seed)
        validation = feature_batches(val_x, val_y, max(batch, VALIDATION_BATCH), None)
        _fit(ctx, trainable, train, validation, HEAD_ON_FEATURES, train_items)
    return ctx.model


def train_end_to_end(ctx: StageContext):
    """The whole model trains on images augmented afresh every epoch; the frozen body runs every time."""
    config, settings, dataset = ctx.config, ctx.settings, ctx.dataset
    body = ctx.kept.body
    head = build_head(body.output.shape[1:], ctx.num_classes, config)
    model = assemble(body, head, config)
    ctx.model = model
    ctx.rescue = RescueWeights(head)
    compile_for(model, ctx.num_classes, settings)
    train_items, val_items = readable(ctx, dataset.train), readable(ctx, dataset.validation)
    check_left(train_items, val_items, ctx.num_classes)
    ctx.head, ctx.train_items, ctx.val_items = head, train_items, val_items
    size, batch = config.input_size, settings.batch_size
    train = image_dataset(train_items, size, batch, shuffle_seed=settings.seed, augment=augmenter(settings.seed))
    validation = image_dataset(val_items, size, batch)
    with ctx.job.phase(Phase.TRAINING):
        _fit(ctx, model, train, validation, END_TO_END, train_items)
    return model


def train_fine_tune(ctx: StageContext):
    """The second stage: the top blocks of the backbone train with the head, at a low learning rate.

    As in the Keras guide, after the head has trained: the layers after a block end are
    unfrozen (BatchNormalization stays frozen, in inference mode), the model is recompiled,
    and training goes on. The layers below never change, so their output is computed once
    per image (and per kept augmented view) and cached; each epoch then runs only the
    unfrozen top and the head. With augmentation made afresh every epoch the whole model
    runs instead (`fine_tune_end_to_end`).
    """
    from tlcore.extraction import body_copy
    from tlcore.model import fine_tune_boundary, unfreeze_top

    if ctx.job.stop_requested:
        return ctx.model
    config, settings = ctx.config, ctx.settings
    body = body_copy(ctx.kept)  # the kept body is never trained
    boundary, count = fine_tune_boundary(body, config.backbone, settings.fine_tune_layers, settings.fine_tune_from)
    top = unfreeze_top(body, boundary)
    ctx.job.note_fine_tuning(boundary, count)
    ctx.model = assemble(body, ctx.head, config)
    done = ctx.job.history.epochs
    epochs = done + settings.fine_tune_epochs
    fine = replace(settings, learning_rate=settings.fine_tune_learning_rate)
    if settings.augment and not settings.augment_views:
        return fine_tune_end_to_end(ctx, fine, done, epochs)
    views = min(settings.augment_views, settings.fine_tune_epochs) if settings.augment else 0

    def features(items, split: str, view_seed=None):
        def progress(step, total, cached):
            ctx.job.update(step=step, steps=total)
            ctx.job.emit(Progress(phase=Phase.EXTRACTING, done=step, total=total, split=split, cached=cached))

        found = features_for(ctx.kept, items, MAP32, ctx.cache, view_seed=view_seed, progress=progress, layer=boundary,
                             should_stop=lambda: ctx.job.stop_requested, in_use=ctx.in_use)
        ctx.job.note_unreadable(found.unreadable)
        return found.rows

    with ctx.job.phase(Phase.EXTRACTING):
        if views:
            train_x = [features(ctx.train_items, f"fine-tune train, view {v + 1}", settings.seed + VIEW_SEED_STEP * (v + 1))
                       for v in range(views)]
        else:
            train_x = features(ctx.train_items, "fine-tune train")
        val_x = features(ctx.val_items, "fine-tune validation")
    inputs = keras.Input(shape=tuple(int(v) for v in top.input.shape[1:]), name="block_features")
    model = keras.Model(inputs, ctx.head(top(inputs)), name="fine_tuned_top_and_head")
    ctx.rescue = RescueWeights(model)
    compile_for(model, ctx.num_classes, fine)
    train_y = np.asarray([item.label for item in ctx.train_items], dtype="int32")
    val_y = np.asarray([item.label for item in ctx.val_items], dtype="int32")
    batch = settings.batch_size
    train = ViewBatches(train_x, train_y, batch, settings.seed) if views else feature_batches(train_x, train_y, batch,
                                                                                              settings.seed)
    validation = feature_batches(val_x, val_y, max(batch, VALIDATION_BATCH), None)
    with ctx.job.phase(Phase.FINE_TUNING):
        _fit(ctx, model, train, validation, FINE_TUNE, ctx.train_items, epochs=epochs, initial_epoch=done,
             phase=Phase.FINE_TUNING, extra=[KeepBestOnStop(ctx.job)])
    return ctx.model


def fine_tune_end_to_end(ctx: StageContext, fine: TrainConfig, done: int, epochs: int):
    """Fine-tuning the way the TensorFlow tutorial does it: the whole model runs on every image, every epoch."""
    model = ctx.model
    ctx.rescue = RescueWeights(model)
    compile_for(model, ctx.num_classes, fine)
    size, batch = ctx.config.input_size, fine.batch_size
    augment = augmenter(fine.seed) if fine.augment else None
    train = image_dataset(ctx.train_items, size, batch, shuffle_seed=fine.seed, augment=augment)
    validation = image_dataset(ctx.val_items, size, batch)
    with ctx.job.phase(Phase.FINE_TUNING):
        _fit(ctx, model, train, validation, FINE_TUNE, ctx.train_items, epochs=epochs, initial_epoch=done,
             phase=Phase.FINE_TUNING, extra=[KeepBestOnStop(ctx.job)])
    return model


def readable(ctx: StageContext, items) -> list:
    """The items TensorFlow decodes; the others are noted on the job and left out."""
    from tlcore.checking import map_in_threads
    from tlcore.images import tensorflow_decodes

    def decodes(item) -> bool:
        try:
            with open(item.path, "rb") as handle:
                return tensorflow_decodes(handle.read())
        except OSError:
            return False

    ok = map_in_threads(decodes, list(items))
    ctx.job.note_unreadable([item for item, good in zip(items, ok) if not good])
    return [item for item, good in zip(items, ok) if good]


def check_left(train_items, val_items, num_classes: int) -> None:
    """Fails plainly when too few readable images are left to train and measure on."""
    from tlcore.errors import TransferLabError

    classes = {item.label for item in train_items}
    if len(classes) < num_classes or not val_items:
        raise TransferLabError(
            "Too few of the images could be read to train: every class needs readable training images, and "
            "some images are needed to measure the model. Replace the files named above and try again."
        )
