"""A run as a readable Keras script that trains the same model again without Transfer Lab: the bridge to code."""

from __future__ import annotations

from pathlib import Path

from tlcore.backbones import get_backbone
from tlcore.runs import Run

_OPTIMIZERS = {"adam": "Adam", "rmsprop": "RMSprop", "sgd": "SGD"}
_POOLING = {
    "avg": "keras.layers.GlobalAveragePooling2D()",
    "max": "keras.layers.GlobalMaxPooling2D()",
    "flatten": "keras.layers.Flatten()",
}
_SCALING = {
    "tf": "x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)  # {name} wants values in [-1, 1]",
    "torch": "x = keras.layers.Normalization(mean=[123.675, 116.28, 103.53], variance=[3409.976, 3262.694, 3291.890])"
             "(inputs)  # {name} wants ImageNet-normalised values",
    "none": "x = inputs  # {name} scales 0-255 values itself",
}


def training_script(run_dir: str | Path) -> str:
    """The Python source of a script that reproduces the run with plain Keras.

    `python train_again.py [DATA_FOLDER]` loads the data with
    `keras.utils.image_dataset_from_directory` (same validation share, seed and image size),
    builds the same backbone cut at the same layer with the same head, trains with the same
    optimiser, learning rate and epochs, saves `train_again.keras`, and prints
    `val_accuracy: X` as its last line. Keras splits the images its own way, so its validation
    images are not exactly the run's.

    Raises:
        RunError: the folder is not a run.
    """
    run = Run.open(run_dir)
    model, train = run.model_config.resolved(), run.train_config.resolved()
    spec = get_backbone(model.backbone)
    data = run.data
    folders = data.get("folders") or {}
    root = data.get("root") or data.get("source") or "path/to/your/images"
    classes = list(data.get("classes") or run.labels())
    binary = len(classes) == 2
    weights = "None" if model.weights == "none" else '"imagenet"' if model.weights == "imagenet" else repr(model.weights)
    backbone_args = ["include_top=False", f"weights={weights}", "input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3)"]
    if model.alpha is not None:
        backbone_args.append(f"alpha={model.alpha}")
    presplit = "train" in folders and "validation" in folders
    lines = [
        f'"""Trains again, with plain Keras, the model of the Transfer Lab run {run.name}.',
        "",
        "Usage: python train_again.py [DATA_FOLDER]",
        "",
        f"{spec.display_name} cut at `{model.cut_layer}` with a new head, the backbone frozen. The last line",
        'printed is "val_accuracy: X". Needs tensorflow; the ImageNet weights are downloaded once.',
        '"""',
        "",
        "import sys",
        "from pathlib import Path",
        "",
        "import keras",
        "",
        f"DATA = Path(sys.argv[1] if len(sys.argv) > 1 else {root!r})",
        f"IMAGE_SIZE = {model.input_size}",
        f"BATCH_SIZE = {train.batch_size}",
        f"EPOCHS = {train.epochs}",
        f"SEED = {train.seed}",
        f"VALIDATION_SPLIT = {train.val_split}",
        f"CLASSES = {classes!r}",
        "",
        "keras.utils.set_random_seed(SEED)",
        "load = dict(image_size=(IMAGE_SIZE, IMAGE_SIZE), batch_size=BATCH_SIZE, seed=SEED, class_names=CLASSES,",
        f'            label_mode="{"binary" if binary else "int"}")',
    ]
    if presplit:
        lines += [
            f"train = keras.utils.image_dataset_from_directory(DATA / {folders['train']!r}, shuffle=True, **load)",
            f"validation = keras.utils.image_dataset_from_directory(DATA / {folders['validation']!r}, shuffle=False, **load)",
        ]
    else:
        where = folders.get("all") or folders.get("train") or ""
        lines += [
            f"train, validation = keras.utils.image_dataset_from_directory(",
            f"    DATA / {where!r}, validation_split=VALIDATION_SPLIT, subset='both', **load)",
        ]
    if train.augment:
        lines += [
            "",
            "# Random flips, rotations, zooms and shifts of the training images only, as in the run.",
            "augment = keras.Sequential([",
            '    keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.1, fill_mode="nearest"),',
            '    keras.layers.RandomZoom(0.2, fill_mode="nearest"), keras.layers.RandomTranslation(0.2, 0.2, fill_mode="nearest"),',
            "])",
            "train = train.map(lambda images, labels: (augment(images, training=True), labels))",
        ]
    lines += [
        "",
        f"base = keras.applications.{spec.constructor}({', '.join(backbone_args)})",
        f'backbone = keras.Model(base.inputs, base.get_layer("{model.cut_layer}").output, name="backbone")',
        "backbone.trainable = False  # transfer learning: only the new head learns",
        "",
        "inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))",
        _SCALING[spec.preprocess_mode].format(name=spec.display_name),
        "x = backbone(x, training=False)  # batch normalisation keeps its ImageNet statistics",
        f"x = {_POOLING[model.pooling]}(x)",
    ]
    for units in model.dense_units:
        lines.append(f'x = keras.layers.Dense({units}, activation="relu")(x)')
        if model.dropout:
            lines.append(f"x = keras.layers.Dropout({model.dropout})(x)")
    if not model.dense_units and model.dropout:
        lines.append(f"x = keras.layers.Dropout({model.dropout})(x)")
    if binary:
        lines.append('outputs = keras.layers.Dense(1, activation="sigmoid")(x)')
    else:
        lines.append(f'outputs = keras.layers.Dense({len(classes)}, activation="softmax")(x)')
    loss = "binary_crossentropy" if binary else "sparse_categorical_crossentropy"
    lines += [
        "model = keras.Model(inputs, outputs)",
        f"model.compile(optimizer=keras.optimizers.{_OPTIMIZERS[train.optimizer]}(learning_rate={train.learning_rate}),",
        f'              loss="{loss}", metrics=["accuracy"])',
        "model.summary()",
        "",
        "callbacks = []",
    ]
    if train.early_stopping:
        lines.append(f'callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience={train.patience}, '
                     "restore_best_weights=True))")
    fit = "history = model.fit(train, validation_data=validation, epochs=EPOCHS, callbacks=callbacks"
    if train.class_weights == "balanced":
        lines += [
            "# Balanced class weights: each class counts the same however many images it has.",
            "import numpy",
            "labels = numpy.concatenate([y.numpy().ravel() for _, y in train]).astype(int)",
            "counts = numpy.bincount(labels, minlength=len(CLASSES))",
            "class_weight = {c: len(labels) / (len(CLASSES) * n) for c, n in enumerate(counts) if n}",
        ]
        fit += ", class_weight=class_weight"
    lines += [
        fit + ")",
        'model.save("train_again.keras")',
        "loss, accuracy = model.evaluate(validation, verbose=0)",
        'print(f"val_accuracy: {accuracy:.4f}")',
        "",
    ]
    return "\n".join(lines)
