"""Frozen-backbone training, measured side by side: the classic `model.fit` on images, tlcore, and the floor.

In one process, on the same data, split and settings:

- classic: `keras` `model.fit` on images streamed through `tf.data`, the frozen backbone
  inside the model, so it runs over every image in every epoch (the TensorFlow tutorial);
- tlcore: a `TrainingJob` from the loaded dataset to the saved model (building the body,
  extraction, head training, saving), cold: an empty feature cache and no body kept in memory;
- tlcore again with only head settings changed, reusing the cached features;
- the floor: one forward pass of the cut backbone over all training and validation images,
  decoding included, timed warm (once as Keras runs the body, once as tlcore runs it);
- raw forward throughput of the backbone on random tensors of the same shape.

The floor, tlcore's cold run and the raw forward are each measured `--repeats` times,
interleaved, and the best of each is compared: a shared machine has slow spells, and
interleaving keeps one from favouring either side.

Usage:
    python benchmarks/train_speed.py [DATA] [--epochs 10] [--per-class N] [--augment] ...
    python benchmarks/train_speed.py --smoke   # a tiny run that only checks it works

DATA is a dataset folder or zip (default: the flowers set in ../shared/assets).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from pathlib import Path

from common import (
    DATASETS,
    machine_line,
    parse_with_smoke,
    print_table,
    private_keras_home,
    scratch_dir,
    small_copy,
    stopwatch,
    subset,
)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", default=str(DATASETS / "flowers"), help="dataset folder or zip")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=None, help="use at most N training images per class")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--alpha", type=float, default=0.35)
    parser.add_argument("--cut", default="out_relu")
    parser.add_argument("--pooling", default="avg")
    parser.add_argument("--dense", type=int, default=128)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--learning-rate", type=float, default=0.001)
    parser.add_argument("--class-weights", default="none", choices=("none", "balanced"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1,
                        help="also train classic and tlcore with the next N-1 seeds, to compare accuracy beyond one seed's luck")
    parser.add_argument("--augment", action="store_true", help="also compare training with augmentation")
    parser.add_argument("--views", type=int, default=3, help="cached augmented views per image (with --augment)")
    parser.add_argument("--augment-repeats", type=int, default=1,
                        help="times the augmented runs are measured, interleaved; the best is kept")
    parser.add_argument("--skip-classic", action="store_true", help="leave out the classic runs (quick checks)")
    parser.add_argument("--fine-tune-layers", type=int, default=0,
                        help="also compare a fine-tuning stage of the top N layers: tlcore's cached way against the "
                        "tutorial's (the whole backbone every epoch)")
    parser.add_argument("--fine-tune-epochs", type=int, default=5, help="epochs of that fine-tuning stage")
    parser.add_argument("--fine-tune-repeats", type=int, default=1, help="times the fine-tuning runs are measured")
    parser.add_argument("--raw-images", type=int, default=800, help="images per timing of the raw forward throughput")
    parser.add_argument("--repeats", type=int, default=3,
                        help="times the floor, the raw forward and tlcore's cold training are measured, interleaved; the best is kept")
    return parse_with_smoke(parser, smoke_defaults)


def smoke_defaults() -> dict:
    """`--smoke`: 5 horse-or-human images per class at 96 px, one epoch, one measurement of each path.

    Add `--augment --views 1` to run the augmented paths too (about 20 s more).
    """
    return {"data": str(small_copy(DATASETS / "horse-or-human", 5)), "epochs": 1, "input_size": 96, "repeats": 1,
            "raw_images": 16, "fine_tune_layers": 10, "fine_tune_epochs": 1}


def main():
    args = parse_args()
    private_keras_home()

    import keras
    import numpy as np
    import tensorflow as tf

    from tlcore.config import ModelConfig, Phase, Status, TrainConfig
    from tlcore.dataset import load_dataset
    from tlcore.extraction import EXTRACTION_BATCH, FeatureExtractor, forget_bodies
    from tlcore.inputs import augmenter, image_dataset
    from tlcore.model import assemble, build_body, build_head, fine_tune_boundary, preprocess, random_backbone, unfreeze_top
    from tlcore.training import TrainingJob, class_weights, compile_for
    from tlcore.training.events import PhaseStarted, Progress

    print(machine_line())
    work = scratch_dir("train-speed")
    dataset = subset(load_dataset(args.data, val_split=0.2, seed=args.seed, work_dir=work / "load"), args.per_class)
    n_train, n_val = len(dataset.train), len(dataset.validation)
    model_config = ModelConfig(
        backbone="mobilenet_v2", alpha=args.alpha, input_size=args.input_size, cut_layer=args.cut,
        pooling=args.pooling, dense_units=(args.dense,) if args.dense else (), dropout=args.dropout,
    ).resolved()
    train_config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        optimizer=args.optimizer, seed=args.seed, class_weights=args.class_weights,
    ).resolved()
    size = model_config.input_size
    print(
        f"data: {args.data} — {len(dataset.classes)} classes, {n_train} training + {n_val} validation images\n"
        f"model: MobileNetV2 alpha {model_config.alpha} at {size}px, cut `{model_config.cut_layer}`, "
        f"{model_config.pooling} pooling, dense {list(model_config.dense_units)}, dropout {model_config.dropout}; "
        f"{train_config.optimizer} lr {train_config.learning_rate}, batch {train_config.batch_size}, "
        f"{train_config.epochs} epochs, seed {train_config.seed}, class weights {train_config.class_weights}"
    )
    # The architecture's first build is paid once per process; pay it before any timing.
    random_backbone(model_config.backbone, model_config.alpha, size)
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}
    accuracy: dict[str, float] = {}
    histories: dict[str, list[float]] = {}
    notes: dict[str, str] = {}

    # Raw forward throughput on random tensors --------------------------------------------------
    body = build_body(model_config)
    spec = tf.TensorSpec([None, size, size, 3], tf.float32)
    keras_forward = tf.function(
        lambda images: body(preprocess(model_config.backbone, images), training=False), input_signature=[spec]
    )
    folded = FeatureExtractor(body, model_config, ("map",), map_dtype="float32")
    folded_forward = lambda images: folded.tensors(images)["map"]  # noqa: E731
    raw: dict[tuple[str, int], float] = {}

    def measure_raw(forwards):
        """Raw throughput on random tensors; keeps the best rate seen for each forward and batch."""
        for name, forward in forwards.items():
            for batch in sorted({EXTRACTION_BATCH, 32}):
                images = tf.random.uniform((batch, size, size, 3), 0, 255, seed=1)
                forward(images).numpy()
                calls = max(1, args.raw_images // batch)
                start = time.perf_counter()
                for _ in range(calls):
                    forward(images).numpy()
                rate = batch * calls / (time.perf_counter() - start)
                raw[(name, batch)] = max(rate, raw.get((name, batch), 0.0))

    forwards = {"Keras body": keras_forward, "tlcore (folded)": folded_forward}
    measure_raw(forwards)
    print_table(
        ["forward on random tensors", "batch", "images/s"],
        [[name, batch, rate] for (name, batch), rate in raw.items()],
        title="Raw forward throughput of the cut backbone (first measurement)",
    )

    # The floor: one warm pass over every image, decoding included -------------------------------
    everything = dataset.train + dataset.validation
    keras_floor = "floor, Keras body (batch 32)"
    extraction_name = f"floor, tlcore extraction (batch {EXTRACTION_BATCH})"
    trials: dict[str, list[float]] = {}

    def one_pass(forward, batch):
        for images, _ in image_dataset(everything, size, batch):
            forward(images).numpy()

    def best_of(name, block):
        """Runs `block` timed; `seconds[name]` and `cpu[name]` keep the fastest run."""
        timed, timed_cpu = {}, {}
        with stopwatch(timed, name, timed_cpu):
            block()
        trials.setdefault(name, []).append(timed[name])
        if timed[name] <= seconds.get(name, float("inf")):
            seconds[name], cpu[name] = timed[name], timed_cpu[name]

    one_pass(keras_forward, 32)  # warms the file cache and tf.data, so every pass reads the same way
    best_of(keras_floor, lambda: one_pass(keras_forward, 32))

    # The classic pipeline: model.fit on images, backbone inside, every epoch ---------------------
    def record(name: str, history: list[float], phases: dict | None = None) -> None:
        """Keeps the accuracy of the run whose time `best_of` kept."""
        if seconds[name] == trials[name][-1]:
            accuracy[name] = history[-1]
            histories[name] = history
            if phases:
                notes[name] = ", ".join(f"{phase} {value:.1f}s" for phase, value in phases.items())

    def classic_model(settings):
        """Keras' way: a fresh body and head on images, seeded as tlcore seeds its head; (body, compiled model)."""
        body = build_body(model_config)
        keras.utils.set_random_seed(settings.seed)
        head = build_head(body.output.shape[1:], len(dataset.classes), model_config)
        model = assemble(body, head, model_config)
        compile_for(model, len(dataset.classes), settings)
        return body, model

    def classic(augment: bool, settings=train_config, label: str | None = None):
        name = label or "classic" + (" + augmentation" if augment else "")
        fitted = {}

        def run():
            _, model = classic_model(settings)
            train = image_dataset(
                dataset.train, size, settings.batch_size, shuffle_seed=settings.seed,
                augment=augmenter(settings.seed) if augment else None,
            )
            validation = image_dataset(dataset.validation, size, settings.batch_size)
            # The same class weights as tlcore's training (none by default).
            weights = class_weights([item.label for item in dataset.train], len(dataset.classes), settings.class_weights)
            fitted["history"] = model.fit(
                train, validation_data=validation, epochs=settings.epochs, class_weight=weights, verbose=0
            )

        best_of(name, run)
        record(name, fitted["history"].history["val_accuracy"])

    def tutorial_fine_tune(settings):
        """The TensorFlow tutorial's two steps: the head on images, then the top blocks unfrozen, every epoch on images."""
        name = f"tutorial fine-tune ({settings.fine_tune_layers}+ layers)"
        fitted = {}

        def run():
            body, model = classic_model(settings)
            train = image_dataset(dataset.train, size, settings.batch_size, shuffle_seed=settings.seed)
            validation = image_dataset(dataset.validation, size, settings.batch_size)
            first = model.fit(train, validation_data=validation, epochs=settings.epochs, verbose=0)
            boundary, _ = fine_tune_boundary(body, model_config.backbone, settings.fine_tune_layers)
            unfreeze_top(body, boundary)
            compile_for(model, len(dataset.classes), dataclasses.replace(settings, learning_rate=settings.fine_tune_learning_rate))
            second = model.fit(train, validation_data=validation, epochs=settings.epochs + settings.fine_tune_epochs,
                               initial_epoch=settings.epochs, verbose=0)
            fitted["history"] = first.history["val_accuracy"] + second.history["val_accuracy"]

        best_of(name, run)
        record(name, fitted["history"])

    # tlcore: a training job from the loaded dataset to the saved model -------------------------
    warm: dict[str, object] = {}

    def tlcore(name: str, config: ModelConfig, settings: TrainConfig, fresh: bool, folder: Path | None = None):
        """One training job; `fresh` makes it cold (no kept body, an empty feature cache)."""
        if fresh:
            forget_bodies()
            folder = scratch_dir("tlcore")
        folder = folder or warm["folder"]
        events: list = []
        job = TrainingJob(dataset, config, settings, runs_dir=work / "runs", work_dir=folder, on_event=events.append)
        finished = {}
        best_of(name, lambda: finished.update(state=job.run()))
        state = finished["state"]
        if state.status != Status.FINISHED:
            raise SystemExit(f"{name} {state.status}: {state.message}")
        record(name, state.history["val_accuracy"], state.phase_seconds)
        if seconds[name] == trials[name][-1]:
            notes[name] += extraction_pace(events)
        if fresh:
            if "folder" in warm:
                shutil.rmtree(warm["folder"])
            warm["folder"] = folder  # the next, warm, runs reuse this one's feature cache

    def extraction_pace(events: list) -> str:
        """How long the extraction took to deliver its first batch, and its pace after that."""
        start = [e.time for e in events if isinstance(e, PhaseStarted) and e.phase == Phase.EXTRACTING]
        batches = [e for e in events if isinstance(e, Progress) and e.phase == Phase.EXTRACTING and not e.cached]
        if not start or len(batches) < 2:
            return ""
        first, last = batches[0].time, batches[-1].time
        per_batch = (last - first) / (len(batches) - 1)  # one event per batch
        return f" (first batch after {first - start[0]:.1f}s, then {per_batch * 1000:.0f} ms per batch)"

    # Interleaved, so that a slow spell of a shared machine does not favour one side.
    for _ in range(args.repeats):
        best_of(extraction_name, lambda: one_pass(folded_forward, EXTRACTION_BATCH))
        tlcore("tlcore", model_config, train_config, fresh=True)
        measure_raw(forwards)

    if not args.skip_classic:
        classic(augment=False)
    retrain = dataclasses.replace(model_config, dense_units=(64,), dropout=0.5)
    tlcore(
        "tlcore, head settings changed", retrain,
        dataclasses.replace(train_config, learning_rate=train_config.learning_rate / 2, optimizer="rmsprop"), fresh=False,
    )
    if args.augment:
        augmented = dataclasses.replace(train_config, augment=True)
        for _ in range(args.augment_repeats):
            if not args.skip_classic:
                classic(augment=True)
            tlcore("tlcore + augmentation", model_config, augmented, fresh=False)
            if args.views:
                # Each time into an empty cache, so that the views are extracted every time.
                views = scratch_dir("views")
                tlcore(f"tlcore + {args.views} cached augmented views", model_config,
                       dataclasses.replace(augmented, augment_views=args.views), fresh=False, folder=views)
                shutil.rmtree(views)

    if args.fine_tune_layers:
        tuned = dataclasses.replace(train_config, fine_tune_layers=args.fine_tune_layers,
                                    fine_tune_epochs=args.fine_tune_epochs, fine_tune_learning_rate=None).resolved()
        for _ in range(args.fine_tune_repeats):
            if not args.skip_classic:
                tutorial_fine_tune(tuned)
            tlcore("tlcore + fine-tune (cold)", model_config, tuned, fresh=True)

    for seed in range(args.seed + 1, args.seed + args.seeds):
        settings = dataclasses.replace(train_config, seed=seed)
        if not args.skip_classic:
            classic(augment=False, settings=settings, label=f"classic, seed {seed}")
        tlcore(f"tlcore, seed {seed}", model_config, settings, fresh=False)

    # Report ------------------------------------------------------------------------------------
    extra = {name: seconds.pop(name) for name in list(seconds) if ", seed " in name}
    floor_name = min((keras_floor, extraction_name), key=seconds.get)
    floor = seconds[floor_name]
    print_table(
        ["forward on random tensors", "batch", "images/s"],
        [[name, batch, rate] for (name, batch), rate in raw.items()],
        title=f"Raw forward throughput of the cut backbone (best of {args.repeats + 1}, interleaved with the runs below)",
    )
    print_table(
        ["measured repeatedly", "best s", "every run, s"],
        [[name, min(values), "  ".join(f"{v:.1f}" for v in values)] for name, values in trials.items() if len(values) > 1],
        title=f"Each measured {args.repeats} times, interleaved; the tables below use the best",
    )
    rows = []
    floor_cpu = cpu[floor_name]
    for name, value in seconds.items():
        base = ("classic + augmentation" if "augment" in name else
                next((n for n in seconds if n.startswith("tutorial fine-tune")), "classic") if "fine-tune" in name else "classic")
        is_floor = name.startswith("floor")
        rows.append([
            name, value, cpu[name], accuracy.get(name),
            None if base not in seconds or is_floor else value / seconds[base],
            None if is_floor else value / floor,
            None if base not in cpu or is_floor else cpu[name] / cpu[base],
            None if is_floor else cpu[name] / floor_cpu,
            notes.get(name, ""),
        ])
    print_table(
        ["path", "seconds", "CPU s", "val acc", "x classic", "x floor", "CPU x classic", "CPU x floor", "tlcore phases (wall)"],
        rows,
        title=f"Training, {train_config.epochs} epochs ({n_train} + {n_val} images); floor = {floor_name}",
    )
    print_table(
        ["validation accuracy by epoch", *[str(e + 1) for e in range(max(len(h) for h in histories.values()))]],
        [[name, *history] for name, history in histories.items()],
    )
    if "classic" in seconds:
        print(
            f"tlcore / classic = {seconds['tlcore'] / seconds['classic']:.3f} wall, "
            f"{cpu['tlcore'] / cpu['classic']:.3f} CPU ({seconds['classic'] / seconds['tlcore']:.1f}x faster); "
            f"tlcore / floor = {seconds['tlcore'] / floor:.2f} wall, {cpu['tlcore'] / floor_cpu:.2f} CPU; "
            f"val accuracy tlcore {accuracy['tlcore']:.4f} vs classic {accuracy['classic']:.4f} "
            f"({(accuracy['tlcore'] - accuracy['classic']) * 100:+.2f} points)"
        )
    if args.seeds > 1:
        seeds = list(range(args.seed, args.seed + args.seeds))
        names = {"classic": ["classic"] + [f"classic, seed {s}" for s in seeds[1:]],
                 "tlcore": ["tlcore"] + [f"tlcore, seed {s}" for s in seeds[1:]]}
        rows = [[seed, *(accuracy.get(names[path][i]) for path in ("classic", "tlcore"))] for i, seed in enumerate(seeds)]
        found = {path: [accuracy[n] for n in names[path] if n in accuracy] for path in names}
        means = {path: float(np.mean(values)) if values else None for path, values in found.items()}
        rows.append(["mean", means["classic"], means["tlcore"]])
        rows.append(["std", *(float(np.std(found[p])) if found[p] else None for p in ("classic", "tlcore"))])
        print_table(["seed", "classic val acc", "tlcore val acc"], rows,
                    title=f"Final validation accuracy over {args.seeds} seeds (later seeds' tlcore runs reuse the cached features)")
        if means["classic"] is not None:
            print(f"mean val accuracy tlcore - classic = {(means['tlcore'] - means['classic']) * 100:+.2f} points")
        print("later seeds took: " + ", ".join(f"{k} {v:.1f}s" for k, v in extra.items()))
    floor_batches = -(-len(everything) // EXTRACTION_BATCH)
    print(f"floor pace: {seconds[extraction_name] / floor_batches * 1000:.0f} ms per batch of {EXTRACTION_BATCH}")
    extraction = len(everything) / seconds[extraction_name]
    for name in ("Keras body", "tlcore (folded)"):
        rate = raw[(name, EXTRACTION_BATCH)]
        print(
            f"extraction {extraction:.1f} images/s (decode + forward) vs raw forward of the {name} "
            f"{rate:.1f} images/s at batch {EXTRACTION_BATCH}: {rate / extraction:.2f}x"
        )
    print(machine_line())


if __name__ == "__main__":
    main()
