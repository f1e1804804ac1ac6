"""Answering the dashboard: single-image prediction against the model's own forward time, and the layer browser.

- prediction: a run is trained (or `--run` given), its predictor loaded once, then one image at a
  time is classified warm, against the model's own forward pass on an already prepared image;
- layer browser: InceptionV3's (and MobileNetV2's) layer table, first build and later requests.

Usage:
    python benchmarks/serving.py [--run RUN_DIR] [--calls 50]
    python benchmarks/serving.py --smoke   # a tiny run that only checks it works
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import DATASETS, machine_line, parse_with_smoke, print_table, private_keras_home, scratch_dir, small_copy


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="an existing run folder to predict with (default: train one on horse-or-human)")
    parser.add_argument("--calls", type=int, default=50, help="timed calls per measurement (the median is reported)")
    parser.add_argument("--slow-calls", type=int, default=3,
                        help="timed calls of Predictor.from_run (a model load each); model.predict and the layer table get 10")
    parser.add_argument("--data", default=str(DATASETS / "horse-or-human"), help="what the run is trained on (without --run)")
    parser.add_argument("--input-size", type=int, default=224, help="input size of the run trained (without --run)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the run trained (without --run)")
    parser.add_argument("--layer-backbones", default="inception_v3,mobilenet_v2", help="backbones of the layer browser timing")
    return parse_with_smoke(parser, smoke_defaults)


def smoke_defaults() -> dict:
    """`--smoke`: a run on 4 horse-or-human images per class at 96 px, few calls, MobileNetV2's layer table only."""
    return {"data": str(small_copy(DATASETS / "horse-or-human", 4)), "input_size": 96, "epochs": 1, "calls": 3,
            "slow_calls": 1, "layer_backbones": "mobilenet_v2"}


def median_ms(function, calls: int) -> float:
    function()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main():
    args = parse_args()
    private_keras_home()
    import numpy as np
    import tensorflow as tf

    from tlcore.config import ModelConfig, Status
    from tlcore.layers import cut_options, layer_table
    from tlcore.predict import Predictor, forget_predictors, get_predictor
    from tlcore.training import TrainConfig, train

    print(machine_line())
    run_dir = args.run
    if run_dir is None:
        work = scratch_dir("serving")
        job = train(
            args.data, ModelConfig(backbone="mobilenet_v2", alpha=0.35, input_size=args.input_size),
            TrainConfig(epochs=args.epochs), runs_dir=work / "runs", work_dir=work / "work",
        )
        state = job.snapshot()
        if state.status != Status.FINISHED:
            raise SystemExit(f"training {state.status}: {state.message}")
        run_dir = job.run_dir
        print(f"trained {run_dir} ({state.seconds:.1f}s)")

    forget_predictors()
    start = time.perf_counter()
    predictor = get_predictor(run_dir)
    first_load = time.perf_counter() - start
    png = sorted((DATASETS / "horse-or-human" / "horses").glob("*.png"))[0]
    jpeg = sorted((DATASETS / "flowers" / "daisy").glob("*.jpg"))[0]
    prepared = tf.convert_to_tensor(predictor.resize(np.zeros((300, 300, 3), "uint8"))[None])
    forward = median_ms(lambda: predictor.forward(prepared).numpy(), args.calls)
    rows = [
        ["model forward, 1 prepared image (the reference)", forward, 1.0],
        ["predict_one, 300x300 RGBA PNG", median_ms(lambda: predictor.predict_one(png), args.calls), None],
        ["predict_one, 128x128 JPEG", median_ms(lambda: predictor.predict_one(jpeg), args.calls), None],
        ["predict_one, PNG bytes (an upload)", median_ms(lambda: predictor.predict_one(png.read_bytes()), args.calls), None],
        ["get_predictor, warm (cached)", median_ms(lambda: get_predictor(run_dir), args.calls), None],
        ["Keras model.predict, 1 prepared image", median_ms(lambda: predictor.model.predict(prepared, verbose=0), 10), None],
        ["Predictor.from_run (a load per request)", median_ms(lambda: Predictor.from_run(run_dir), args.slow_calls), None],
    ]
    for row in rows[1:]:
        row[2] = row[1] / forward
    print_table(
        ["single image", "ms (median)", "x forward"],
        rows,
        title=f"Warm single-image prediction (first load of the run's model: {first_load:.2f}s)",
    )

    rows = []
    for backbone in args.layer_backbones.split(","):
        start = time.perf_counter()
        table = layer_table(backbone)
        first = time.perf_counter() - start
        later = median_ms(lambda: layer_table(backbone), 10) / 1000
        cuts = median_ms(lambda: cut_options(backbone), 10) / 1000
        rows.append([backbone, len(table), first, later, cuts])
    print_table(
        ["layer browser", "layers", "first build s", "later requests s", "cut options s"],
        rows,
        title="Layer table (median of 10 later requests)",
    )
    print(machine_line())


if __name__ == "__main__":
    main()
