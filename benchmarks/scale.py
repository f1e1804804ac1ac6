"""Training on many generated images: peak memory at a pooling cut, and a Flatten cut that spills to disk.

Each scenario runs in its own process, so its peak resident memory is its own:

- `pooling`: 20,000 generated images (`tlcore.samples` shapes), MobileNetV2 alpha 0.35 at 224
  cut at `out_relu` with global average pooling, ImageNet weights;
- `flatten`: a Flatten head on InceptionV3 cut at `mixed7` (150 px, random weights: its
  ImageNet weights are not available offline), whose features are too large to hold in memory.

Usage:
    python benchmarks/scale.py [--images 20000] [--flatten-images 6000] [--epochs 10] [--only pooling|flatten]
    python benchmarks/scale.py --smoke   # a tiny run that only checks it works (features spill to disk all the same)
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from common import (
    current_rss_mb,
    machine_line,
    parse_with_smoke,
    peak_rss_mb,
    print_table,
    private_keras_home,
    scratch_dir,
)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20_000, help="generated images for the pooling scenario")
    parser.add_argument("--flatten-images", type=int, default=6_000, help="images for the Flatten scenario")
    parser.add_argument("--image-size", type=int, default=64, help="side of the generated images")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--input-size", type=int, default=224, help="input size of the pooling scenario's MobileNetV2")
    parser.add_argument("--in-memory-mb", type=float, default=None,
                        help="features larger than this (as float32) are read from disk (default: tlcore's own bound)")
    parser.add_argument("--only", choices=("pooling", "flatten"))
    parser.add_argument("--folder", help="reuse (or create) the generated images here")
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    return parse_with_smoke(parser, smoke_defaults)


def smoke_defaults() -> dict:
    """`--smoke`: 5 generated images per class, one epoch, MobileNetV2 at 96 px, and an in-memory bound
    small enough that the Flatten features are still read from disk."""
    return {"images": 20, "flatten_images": 20, "image_size": 32, "epochs": 1, "input_size": 96, "in_memory_mb": 0.25}


def run_scenario(args) -> dict:
    """Trains once in this process and returns what happened, peak memory included."""
    private_keras_home()
    import numpy as np

    from tlcore import features
    from tlcore.config import ModelConfig
    from tlcore.dataset import load_dataset
    from tlcore.features import FeatureCache
    from tlcore.training import TrainConfig, TrainingJob

    if args.in_memory_mb is not None:
        # Read by tlcore each time it decides between memory and disk.
        features.IN_MEMORY_BYTES = int(args.in_memory_mb * 2**20)
    work = Path(args.work)
    started = time.perf_counter()
    dataset = load_dataset(args.data, work_dir=work)
    if args.scenario == "flatten":
        per_class = args.flatten_images // len(dataset.classes)
        import dataclasses

        by_class = lambda items, n: tuple(  # noqa: E731
            item for label in range(len(dataset.classes)) for item in [i for i in items if i.label == label][:n]
        )
        dataset = dataclasses.replace(
            dataset, train=by_class(dataset.train, int(per_class * 0.8)), validation=by_class(dataset.validation, per_class - int(per_class * 0.8))
        )
        config = ModelConfig(backbone="inception_v3", input_size=150, cut_layer="mixed7", pooling="flatten",
                             dense_units=(128,), weights="none")
    else:
        config = ModelConfig(backbone="mobilenet_v2", alpha=0.35, input_size=args.input_size, cut_layer="out_relu",
                             pooling="avg", dense_units=(128,))
    rss_before = current_rss_mb()
    job = TrainingJob(dataset, config, TrainConfig(epochs=args.epochs), runs_dir=work / "runs", work_dir=work)
    state = job.run()
    # Bytes on disk per feature variant (`map`, `avg`, `max`), over every shard of the cache.
    cached: dict[str, int] = {}
    map_floats = 0
    for shard in FeatureCache(work / "features").shards():
        for variant, shape in shard.variants.items():
            cached[variant] = cached.get(variant, 0) + shard.path(variant).stat().st_size
            if variant == features.MAP:
                map_floats += math.prod(shape)
    return {
        "scenario": args.scenario,
        "images": len(dataset.train) + len(dataset.validation),
        "status": str(state.status),
        "message": state.message,
        "seconds": round(time.perf_counter() - started, 1),
        "phases": state.phase_seconds,
        "val_accuracy": state.final.get("val_accuracy"),
        "rss_before_mb": round(rss_before),
        "peak_rss_mb": round(peak_rss_mb()),
        "feature_files_mb": {name: round(size / 2**20, 1) for name, size in sorted(cached.items())},
        "map_as_float32_mb": round(map_floats * 4 / 2**20, 1),
        "in_memory_limit_mb": round(features.IN_MEMORY_BYTES / 2**20, 2),
        "numpy": np.__version__,
    }


def generate(folder: Path, images: int, size: int) -> Path:
    from tlcore.samples import SHAPES, make_shapes_dataset

    started = time.perf_counter()
    make_shapes_dataset(folder, per_class=images // len(SHAPES), size=size)
    count = sum(1 for _ in folder.rglob("*.png"))
    print(f"generated images: {count} PNGs of {size}x{size} in {folder} ({time.perf_counter() - started:.0f}s)")
    return folder


def main():
    args = parse_args()
    if args.scenario:
        print(json.dumps(run_scenario(args)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print(machine_line())
    work = scratch_dir("scale")
    folder = Path(args.folder) if args.folder else work / "shapes"
    generate(folder, max(args.images, args.flatten_images), args.image_size)
    results = []
    for scenario in ("pooling", "flatten"):
        if args.only and args.only != scenario:
            continue
        data = folder
        if scenario == "pooling" and args.images < args.flatten_images:
            sys.exit("--images must be at least --flatten-images (both read the same generated folder)")
        command = [sys.executable, __file__, "--scenario", scenario, "--data", str(data), "--work", str(work / scenario),
                   "--epochs", str(args.epochs), "--flatten-images", str(args.flatten_images),
                   "--input-size", str(args.input_size)]
        if args.in_memory_mb is not None:
            command += ["--in-memory-mb", str(args.in_memory_mb)]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode or not lines:
            print(done.stdout[-3000:], done.stderr[-3000:])
            sys.exit(f"scenario {scenario} failed")
        result = json.loads(lines[-1])
        results.append(result)
        print(json.dumps(result))
    print_table(
        ["scenario", "images", "seconds", "val acc", "peak RSS MB", "feature files on disk MB", "map as float32 MB"],
        [
            [r["scenario"], r["images"], r["seconds"], r["val_accuracy"], r["peak_rss_mb"],
             ", ".join(f"{k} {v}" for k, v in r["feature_files_mb"].items()), r["map_as_float32_mb"]]
            for r in results
        ],
        title=f"Scale (features held in memory up to {results[0]['in_memory_limit_mb']} MB as float32; larger are read from disk)",
    )
    for r in results:
        print(f"{r['scenario']}: {r['status']} {r['message']} phases {r['phases']}")
    print(machine_line())


if __name__ == "__main__":
    main()
