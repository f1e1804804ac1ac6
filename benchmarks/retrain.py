"""Training again with only head settings changed: cached features read back from disk, loading included.

A first training fills the feature cache; then the same data, backbone, weights, cut and input
size are trained with other head settings (dense units, dropout, learning rate, optimizer,
epochs), each timed from the dataset folder to the saved model:

- in the same process, as the dashboard does (its server keeps the frozen body loaded);
- in a fresh process, as `python -m tlcore train` does (the body is built from the weights file).

It also reports the cache's shards and its least-recently-used bound.

Usage:
    python benchmarks/retrain.py [DATA] [--epochs 10] [--input-size 224]
    python benchmarks/retrain.py --smoke   # a tiny run that only checks it works
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import DATASETS, machine_line, parse_with_smoke, print_table, private_keras_home, scratch_dir, small_copy

CHANGES = [
    ("dense 64, dropout 0.5", {"dense_units": (64,), "dropout": 0.5}, {}),
    ("learning rate 0.0005, rmsprop", {}, {"learning_rate": 0.0005, "optimizer": "rmsprop"}),
    ("no hidden layer, 15 epochs", {"dense_units": (), "dropout": 0.2}, {"epochs": 15}),
]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", default=str(DATASETS / "flowers"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    return parse_with_smoke(parser, smoke_defaults)


def smoke_defaults() -> dict:
    """`--smoke`: 6 horse-or-human images per class at 96 px, one epoch."""
    return {"data": str(small_copy(DATASETS / "horse-or-human", 6)), "epochs": 1, "input_size": 96}


def job(data, work: Path, model_changes: dict, train_changes: dict, epochs: int, input_size: int) -> dict:
    from tlcore.config import ModelConfig, Phase, Status
    from tlcore.training import TrainConfig, TrainingJob
    from tlcore.training.events import Progress

    model = ModelConfig(backbone="mobilenet_v2", alpha=0.35, input_size=input_size, cut_layer="out_relu", **model_changes)
    settings = TrainConfig(**{"epochs": epochs, **train_changes})
    events = []
    start = time.perf_counter()
    # Timed from the folder: loading and checking the dataset is part of it.
    training = TrainingJob(data, model, settings, runs_dir=work / "runs", work_dir=work / "work", on_event=events.append)
    state = training.run()
    seconds = time.perf_counter() - start
    if state.status != Status.FINISHED:
        raise SystemExit(f"training {state.status}: {state.message}")
    extraction = [e for e in events if isinstance(e, Progress) and e.phase == Phase.EXTRACTING]
    counts = training.run_folder.data["counts"]
    return {
        "seconds": seconds,
        "phases": state.phase_seconds,
        "cached": bool(extraction) and all(e.cached for e in extraction),
        "val_accuracy": state.final["val_accuracy"],
        "images": sum(sum(c.values()) for c in counts.values()),
    }


def phases_text(phases: dict) -> str:
    return ", ".join(f"{k} {v:.2f}s" for k, v in phases.items())


def main():
    args = parse_args()
    private_keras_home()
    if args.child is not None:
        _, model_changes, train_changes = CHANGES[args.child]
        print(json.dumps(job(args.data, Path(args.work), model_changes, train_changes, args.epochs, args.input_size)))
        return
    print(machine_line())
    work = scratch_dir("retrain")
    first = job(args.data, work, {}, {}, args.epochs, args.input_size)
    print(f"first training: {first['images']} images, {first['seconds']:.1f}s ({phases_text(first['phases'])}), "
          f"val accuracy {first['val_accuracy']:.4f}")
    rows = []
    for name, model_changes, train_changes in CHANGES:
        result = job(args.data, work, model_changes, train_changes, args.epochs, args.input_size)
        rows.append(["same process", name, result["seconds"], result["cached"], result["val_accuracy"], phases_text(result["phases"])])
    name = CHANGES[0][0]
    start = time.perf_counter()
    command = [sys.executable, __file__, args.data, "--epochs", str(args.epochs), "--input-size", str(args.input_size),
               "--child", "0", "--work", str(work)]
    done = subprocess.run(command, capture_output=True, text=True)
    process = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        print(done.stdout[-2000:], done.stderr[-2000:])
        raise SystemExit("the fresh process failed")
    result = json.loads(lines[-1])
    rows.append([f"fresh process ({process:.1f}s with imports)", name, result["seconds"], result["cached"],
                 result["val_accuracy"], phases_text(result["phases"])])
    print_table(
        ["where", "head change", "seconds", "features cached", "val acc", "phases"],
        rows,
        title=f"Training again from the dataset folder to the saved model ({first['images']} images, {args.epochs} epochs unless changed)",
    )
    from tlcore.features import DEFAULT_CACHE_BYTES, FeatureCache

    cache = FeatureCache(work / "work" / "features")
    shards = cache.shards()
    print(
        f"feature cache: {len(shards)} shards, {cache.size() / 2**20:.1f} MB "
        f"(bound {DEFAULT_CACHE_BYTES / 2**30:.0f} GB, least recently used evicted first): "
        + "; ".join(
            f"{len(shard.ids)} images: " + ", ".join(
                f"{variant} {shard.path(variant).stat().st_size / 2**20:.1f} MB" for variant in sorted(shard.variants)
            )
            for shard in shards
        )
    )
    print(machine_line())


if __name__ == "__main__":
    main()
