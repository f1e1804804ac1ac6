"""The command line: `python -m tlcore layers|summary|train|predict|evaluate|inspect`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tlcore.errors import TransferLabError

POOLING_CHOICES = ("flatten", "avg", "max")


def _add_backbone(parser: argparse.ArgumentParser, required: bool = False) -> None:
    from tlcore.backbones import DEFAULT_BACKBONE

    parser.add_argument(
        "--backbone",
        required=required,
        default=None if required else DEFAULT_BACKBONE,
        help="backbone key, for example inception_v3 or mobilenet_v2",
    )
    parser.add_argument("--alpha", type=float, default=None, help="width multiplier (MobileNetV2 only)")
    parser.add_argument("--input-size", type=int, default=None, help="side of the square input in pixels")


def _add_head(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cut", default=None, help="layer to cut the backbone at (default: the backbone's usual)")
    parser.add_argument("--pooling", choices=POOLING_CHOICES, default="avg")
    parser.add_argument(
        "--dense", type=int, nargs="+", default=[128], metavar="UNITS", help="hidden Dense layers; 0 for none"
    )
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--weights", default="imagenet", help="imagenet, none, or the path of a weights file")


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tlcore", description="Transfer Lab: image classifiers by transfer learning.")
    sub = parser.add_subparsers(dest="command", required=True)

    layers = sub.add_parser("layers", help="list every layer of a backbone")
    _add_backbone(layers, required=True)
    _json_flag(layers)

    summary = sub.add_parser("summary", help="parameter counts of a model, without training it")
    _add_backbone(summary, required=True)
    _add_head(summary)
    summary.add_argument("--classes", type=int, required=True, help="number of classes")
    _json_flag(summary)

    train = sub.add_parser("train", help="train a classifier on a folder or zip of images")
    train.add_argument("data", help="dataset folder or .zip (one folder per class)")
    _add_backbone(train)
    _add_head(train)
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--learning-rate", type=float, default=0.001)
    train.add_argument("--optimizer", choices=("rmsprop", "adam", "sgd"), default="adam")
    train.add_argument("--augment", action="store_true", help="random flips, rotations, zooms and shifts")
    train.add_argument(
        "--augment-views", type=int, default=0,
        help="with --augment: N augmented copies per image, extracted once and reused (fast); 0 makes new ones every epoch",
    )
    train.add_argument("--early-stopping", action="store_true", help="stop when validation loss stops improving")
    train.add_argument("--val-split", type=float, default=0.2, help="validation fraction when the data is not split")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--runs-dir", default=None, help="where run folders go (default: runs/)")
    _json_flag(train)

    predict = sub.add_parser("predict", help="class probabilities of images")
    predict.add_argument("run_dir")
    predict.add_argument("images", nargs="+")
    _json_flag(predict)

    evaluate = sub.add_parser("evaluate", help="accuracy, per-class metrics and confusion matrix")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("data", help="dataset folder or .zip")
    _json_flag(evaluate)

    inspect = sub.add_parser("inspect", help="health report of a dataset")
    inspect.add_argument("data", help="dataset folder or .zip")
    inspect.add_argument("--val-split", type=float, default=0.2)
    inspect.add_argument("--seed", type=int, default=0)
    _json_flag(inspect)
    return parser


def _model_config(args):
    from tlcore.model import ModelConfig

    return ModelConfig(
        backbone=args.backbone,
        alpha=args.alpha,
        input_size=args.input_size,
        cut_layer=args.cut,
        pooling=args.pooling,
        dense_units=tuple(args.dense),
        dropout=args.dropout,
        weights=args.weights,
    )


def _cmd_layers(args) -> dict:
    from tlcore.layers import layer_table

    table = layer_table(args.backbone, args.alpha, args.input_size)
    if not args.json:
        columns = ["position", "name", "type", "output_shape", "params", "connected_to", "suggested_cut"]
        print(table[columns].to_string(index=False))
    records = json.loads(table.to_json(orient="records"))
    return {"backbone": args.backbone, "layers": records}


def _cmd_summary(args) -> dict:
    from tlcore.model import summarize

    summary = summarize(_model_config(args), args.classes)
    if not args.json:
        shape = " x ".join(str(v) for v in summary.cut_output_shape)
        print(f"Backbone:             {summary.backbone} at {summary.input_size}x{summary.input_size}")
        print(f"Cut at:               {summary.cut_layer} ({shape})")
        print(f"Total params:         {summary.total_params:,}")
        print(f"Trainable params:     {summary.trainable_params:,}")
        print(f"Non-trainable params: {summary.non_trainable_params:,}")
        for warning in summary.warnings:
            print(f"Warning: {warning}")
    return summary.to_dict()


class _Progress:
    """Progress bars on standard error, one per phase."""

    def __init__(self):
        self.bar = None
        self.key = None

    def __call__(self, event: dict) -> None:
        from tqdm import tqdm

        if event["type"] == "progress":
            key = (event.get("phase"), event.get("split"), event.get("epoch"))
            if key != self.key:
                self.close()
                label = event.get("phase", "")
                if event.get("epoch"):
                    label = f"epoch {event['epoch']}"
                elif event.get("split"):
                    label = f"features ({event['split']})"
                self.bar = tqdm(total=event.get("total") or None, desc=label, file=sys.stderr, leave=False)
                self.key = key
            self.bar.n = event.get("done", 0)
            self.bar.refresh()
        elif event["type"] == "epoch":
            self.close()
            metrics = "  ".join(f"{k} {v:.4f}" for k, v in event["metrics"].items())
            print(f"epoch {event['epoch']}: {metrics}", file=sys.stderr)
        elif event["type"] == "phase":
            self.close()
            print(f"{event['phase']}...", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.key = None


def _cmd_train(args) -> dict:
    from tlcore.training import TrainConfig, TrainingJob, result_dict

    train_config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        optimizer=args.optimizer,
        augment=args.augment,
        augment_views=args.augment_views,
        early_stopping=args.early_stopping,
        val_split=args.val_split,
        seed=args.seed,
    )
    progress = _Progress()
    job = TrainingJob(args.data, _model_config(args), train_config, runs_dir=args.runs_dir, on_event=progress)
    job.start()
    try:
        job.wait()
    except KeyboardInterrupt:
        print("Stopping after the current batch...", file=sys.stderr)
        job.stop()
        job.wait()
    progress.close()
    result = result_dict(job)
    if not args.json:
        history = result["history"]
        print(f"Run:    {result['run_dir']}")
        print(f"Status: {result['status']}" + (f" — {result['message']}" if result["message"] else ""))
        if history["val_accuracy"]:
            print(f"Validation accuracy: {history['val_accuracy'][-1]:.4f} (best {max(history['val_accuracy']):.4f})")
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in result["phase_seconds"].items())
        print(f"Time:   {result['seconds']:.1f}s ({phases})")
    result["exit_code"] = 0 if result["status"] == "finished" else 1
    return result


def _cmd_predict(args) -> dict:
    from tlcore.predict import get_predictor

    predictor = get_predictor(args.run_dir)
    results = []
    for image in args.images:
        prediction = predictor.predict([image])[0]
        results.append({"image": image, **prediction.to_dict()})
        if not args.json:
            shares = "  ".join(f"{name} {p:.1%}" for name, p in prediction.probabilities.items())
            print(f"{image}: {prediction.top_class} ({prediction.confidence:.1%})  [{shares}]")
    return {"run_dir": args.run_dir, "predictions": results}


def _cmd_evaluate(args) -> dict:
    from tlcore.dataset import load_dataset
    from tlcore.evaluate import evaluate
    from tlcore.runs import read_run

    info = read_run(args.run_dir)
    train_config = info.config.get("train", {})
    dataset = load_dataset(args.data, val_split=train_config.get("val_split", 0.2), seed=train_config.get("seed", 0))
    result = evaluate(args.run_dir, dataset)
    if not args.json:
        print(f"Accuracy: {result.accuracy:.4f}")
        print(result.per_class_frame().to_string(index=False))
        print("Confusion matrix (rows: true class, columns: predicted):")
        for name, row in zip(result.classes, result.confusion_matrix):
            print(f"  {name:>20}: {row}")
    return result.to_dict()


def _cmd_inspect(args) -> dict:
    from tlcore.dataset import load_dataset
    from tlcore.health import health_report

    report = health_report(load_dataset(args.data, val_split=args.val_split, seed=args.seed))
    if not args.json:
        print(report.to_text())
    return report.to_dict()


COMMANDS = {
    "layers": _cmd_layers,
    "summary": _cmd_summary,
    "train": _cmd_train,
    "predict": _cmd_predict,
    "evaluate": _cmd_evaluate,
    "inspect": _cmd_inspect,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = COMMANDS[args.command](args)
    except TransferLabError as error:
        if args.json:
            print(json.dumps({"error": str(error)}))
        print(f"Error: {error}", file=sys.stderr)
        return 2
    exit_code = result.pop("exit_code", 0) if isinstance(result, dict) else 0
    if args.json:
        sys.stdout.flush()
        print(json.dumps(result, default=_json_default))
    return exit_code


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
