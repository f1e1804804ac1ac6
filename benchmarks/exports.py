"""Exports measured: each format's size, export time, load time, single-image latency and agreement with the app.

A run is trained (or `--run` given), exported in every format, and each format is loaded the way
its `predict.py` loads it, in this process: load time, the median time to classify one picture
(read, prepared and run, as predict.py does), and how far its probabilities are from the app's
`Predictor` on held-out pictures (largest difference, and top-1 agreement).

Usage:
    python benchmarks/exports.py [--run RUN_DIR] [--images 100]
    python benchmarks/exports.py --smoke   # a tiny run that only checks it works
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

from common import DATASETS, machine_line, parse_with_smoke, print_table, private_keras_home, scratch_dir, small_copy


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="an existing run folder (default: train one)")
    parser.add_argument("--data", default=str(DATASETS / "flowers"), help="what the run is trained on (without --run)")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--images", type=int, default=100, help="held-out pictures compared with the app's answers")
    parser.add_argument("--calls", type=int, default=30, help="timed single-image calls per format (median)")
    return parse_with_smoke(parser, smoke_defaults)


def smoke_defaults() -> dict:
    """`--smoke`: 5 horse-or-human images per class at 96 px, 1 epoch, few pictures and calls."""
    return {"data": str(small_copy(DATASETS / "horse-or-human", 5)), "input_size": 96, "epochs": 1, "images": 4,
            "calls": 3}


def main():
    args = parse_args()
    private_keras_home()
    import numpy as np

    from tlcore.config import ModelConfig, Status
    from tlcore.exports import FORMATS, export_run
    from tlcore.predict import get_predictor
    from tlcore.runs import Run
    from tlcore.training import TrainConfig, train

    print(machine_line())
    work = scratch_dir("exports")
    if args.run:
        run_dir = Path(args.run)
    else:
        job = train(args.data, ModelConfig(input_size=args.input_size), TrainConfig(epochs=args.epochs),
                    runs_dir=work / "runs", work_dir=work / "home")
        if job.snapshot().status != Status.FINISHED:
            sys.exit(f"training failed: {job.snapshot().message}")
        run_dir = job.run_dir
    split = Run(run_dir).split()
    pictures = [item.path for item in split.validation if Path(item.path).is_file()][: args.images]
    predictor = get_predictor(run_dir)
    app = np.array([[p.probabilities[name] for name in predictor.labels] for p in predictor.predict(pictures)])
    out = work / "bundle"
    started = time.perf_counter()
    report = export_run(run_dir, out)
    print(f"exported {len(report['formats'])} formats in {time.perf_counter() - started:.1f}s to {out}")
    sys.path.insert(0, str(out))
    spec = importlib.util.spec_from_file_location("bundle_predict", out / "predict.py")
    bundle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bundle)
    metadata = __import__("json").loads((out / "metadata.json").read_text())
    rows = []
    for name, figures in report["formats"].items():
        start = time.perf_counter()
        model = bundle.Model(name, metadata)
        load = time.perf_counter() - start
        answers = np.stack([model(bundle.load_rgb(path)) for path in pictures])
        times = []
        for _ in range(args.calls):
            start = time.perf_counter()
            model(bundle.load_rgb(pictures[0]))
            times.append(time.perf_counter() - start)
        agreement = float(np.mean(answers.argmax(1) == app.argmax(1)))
        rows.append([name, FORMATS[name].file, figures["bytes"] / 1e6, figures["seconds"], load,
                     statistics.median(times) * 1000, float(np.abs(answers - app).max()), agreement])
    print_table(["format", "file", "MB", "export s", "load s", "1 image ms", "max |p - app|", "top-1 = app"], rows,
                title=f"Export formats of {run_dir.name} ({len(pictures)} held-out pictures, median of {args.calls} calls)")
    int8 = report["formats"].get("tflite-int8", {})
    if int8.get("top1_agreement") is not None:
        print(f"tflite-int8 top-1 agreement with the float model on validation images: {int8['top1_agreement']:.1%}")


if __name__ == "__main__":
    main()
