"""The command line: `python -m tlcore layers|summary|train|predict|evaluate|inspect`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from tlcore.errors import TransferLabError

def add_config_flags(parser: argparse.ArgumentParser, config_class, only=None, required=()) -> None:
    """Adds one flag per field of `ModelConfig` or `TrainConfig`, from the field's metadata.

    Args:
        parser: The (sub)parser.
        config_class: `ModelConfig` or `TrainConfig`.
        only: Names of the fields to add; all when None.
        required: Names of fields that must be given.
    """
    from tlcore.config import config_fields, flag_name

    for item in config_fields(config_class):
        if only is not None and item.name not in only:
            continue
        meta = item.metadata
        default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
        kind = meta.get("kind") or type(default).__name__
        options = {"dest": item.name, "help": meta.get("help")}
        if item.name in required:
            options["required"] = True
        else:
            options["default"] = list(default) if isinstance(default, tuple) else default
        if kind == "bool":
            parser.add_argument(flag_name(item), action="store_true", **{k: v for k, v in options.items() if k != "default"})
            continue
        if kind == "units":
            options.update(type=int, nargs="+", metavar="UNITS")
        elif kind in ("int", "optional int"):
            options["type"] = int
        elif kind in ("float", "optional float"):
            options["type"] = float
        if meta.get("choices"):
            options["choices"] = meta["choices"]
        parser.add_argument(flag_name(item), **options)


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")


BACKBONE_FLAGS = ("backbone", "alpha", "input_size")


def build_parser() -> argparse.ArgumentParser:
    from tlcore.config import SUBSETS, ModelConfig, TrainConfig

    parser = argparse.ArgumentParser(prog="python -m tlcore", description="Transfer Lab: image classifiers by transfer learning.")
    sub = parser.add_subparsers(dest="command", required=True)

    layers = sub.add_parser("layers", help="list every layer of a backbone")
    add_config_flags(layers, ModelConfig, only=BACKBONE_FLAGS, required=("backbone",))
    _json_flag(layers)

    summary = sub.add_parser("summary", help="parameter counts of a model, without training it")
    add_config_flags(summary, ModelConfig, required=("backbone",))
    summary.add_argument("--classes", type=int, required=True, help="number of classes")
    _json_flag(summary)

    train = sub.add_parser("train", help="train a classifier on a folder or zip of images")
    train.add_argument("data", help="dataset folder or .zip (one folder per class)")
    add_config_flags(train, ModelConfig)
    add_config_flags(train, TrainConfig)
    train.add_argument("--runs-dir", default=None, help="where run folders go (default: $TLCORE_RUNS or runs/)")
    _json_flag(train)

    predict = sub.add_parser("predict", help="class probabilities of images, or of every picture of a folder or zip")
    predict.add_argument("run_dir")
    predict.add_argument("images", nargs="+", help="image files, or one folder or .zip of pictures")
    predict.add_argument("--csv", default=None, help="write one row per picture to this CSV file")
    _json_flag(predict)

    explain = sub.add_parser("explain", help="Grad-CAM: where in each image the evidence for a class lies")
    explain.add_argument("run_dir")
    explain.add_argument("images", nargs="+")
    explain.add_argument("--class", dest="class_name", default=None, help="the class to explain (default: the predicted one)")
    explain.add_argument("--layer", default=None, help="a convolutional layer of the backbone (default: the cut layer)")
    explain.add_argument("--out", default=None, help="folder for the overlay PNGs (default: beside each image's name, here)")
    _json_flag(explain)

    evaluate = sub.add_parser(
        "evaluate",
        help="accuracy, per-class metrics and confusion matrix",
        description="Scores a run's model. By default: a test split when there is one (DATA's test/ folder, "
        "or the run's own), else the run's validation images; never images it trained on.",
    )
    evaluate.add_argument("run_dir")
    evaluate.add_argument("data", nargs="?", default=None,
                          help="dataset folder or .zip; the run's own image files when left out")
    evaluate.add_argument("--all", action="store_true", help="score every image of DATA")
    evaluate.add_argument("--split", choices=[s for s in SUBSETS if s != "all"], default=None,
                          help="score the run's validation or training images, or DATA's test folder")
    _json_flag(evaluate)

    export = sub.add_parser("export", help="model files that work without Transfer Lab, with a standalone predict.py")
    export.add_argument("run_dir")
    export.add_argument("--out", required=True, help="the bundle folder to write")
    export.add_argument("--format", dest="formats", action="append", default=None, metavar="F",
                        help="keras, savedmodel, tflite, tflite-int8 or onnx; repeat for several (default: all that "
                        "can be written here)")
    _json_flag(export)

    code = sub.add_parser("code", help="a plain Keras script that trains the run's model again")
    code.add_argument("run_dir")

    inspect = sub.add_parser("inspect", help="health report of a dataset")
    inspect.add_argument("data", help="dataset folder or .zip")
    add_config_flags(inspect, TrainConfig, only=("val_split", "seed"))
    _json_flag(inspect)
    return parser


def _config(config_class, args):
    from tlcore.config import config_fields

    values = {item.name: getattr(args, item.name) for item in config_fields(config_class) if hasattr(args, item.name)}
    return config_class.from_dict(values)


def _model_config(args):
    from tlcore.config import ModelConfig

    return _config(ModelConfig, args)


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

    def __call__(self, event) -> None:
        from tqdm import tqdm

        from tlcore.training import events

        if isinstance(event, events.Progress):
            key = (event.phase, event.split, event.epoch)
            if key != self.key:
                self.close()
                label = str(event.phase)
                if event.epoch:
                    label = f"epoch {event.epoch}"
                elif event.split:
                    label = f"features ({event.split})"
                self.bar = tqdm(total=event.total or None, desc=label, file=sys.stderr, leave=False)
                self.key = key
            self.bar.n = event.done
            self.bar.refresh()
        elif isinstance(event, events.EpochEnded):
            self.close()
            metrics = "  ".join(f"{k} {v:.4f}" for k, v in event.metrics.items())
            print(f"epoch {event.epoch}: {metrics}", file=sys.stderr)
        elif isinstance(event, events.BestEpochRestored):
            print(f"early stopping: the model keeps epoch {event.epoch}", file=sys.stderr)
        elif isinstance(event, events.PhaseStarted):
            self.close()
            print(f"{event.phase}...", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.key = None


def _cmd_train(args) -> dict:
    from tlcore.config import TrainConfig
    from tlcore.dataset import load_dataset

    model_config, train_config = _model_config(args).resolved(), _config(TrainConfig, args).resolved()
    from tlcore.dataset import default_work_dir
    from tlcore.storage import remove_leftovers

    remove_leftovers(default_work_dir())
    # Read before any run folder exists: a dataset that cannot be used leaves nothing behind.
    print("loading data...", file=sys.stderr)
    dataset = load_dataset(args.data, val_split=train_config.val_split, seed=train_config.seed)
    from tlcore.training import TrainingJob, result_dict  # TensorFlow, only once the data is fit to train on

    progress = _Progress()
    job = TrainingJob(dataset, model_config, train_config, runs_dir=args.runs_dir, on_event=progress)
    job.run_folder.update_data(source=str(Path(args.data).resolve()))
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
        print(f"Run:    {plain(result['run_dir'])}")
        print(f"Status: {result['status']}" + (f" — {plain(result['message'])}" if result["message"] else ""))
        if result["val_accuracy"] is not None:
            restored = f" (epoch {result['best_epoch']}, restored by early stopping)" if result["best_epoch"] else ""
            print(f"Validation accuracy: {result['val_accuracy']:.4f}{restored}")
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in result["phase_seconds"].items())
        print(f"Time:   {result['seconds']:.1f}s ({phases})")
    result["exit_code"] = 0 if result["status"] == "finished" else 1
    return result


def _cmd_predict(args) -> dict:
    from tlcore.predict import batch_csv, get_predictor, predict_batch

    predictor = get_predictor(args.run_dir)
    batch = len(args.images) == 1 and (Path(args.images[0]).is_dir() or Path(args.images[0]).suffix.lower() == ".zip")
    results = []
    if batch:
        rows = predict_batch(args.run_dir, args.images[0],
                             progress=None if args.json else lambda done, total: print(
                                 f"\r{done} of {total} pictures", end="", file=sys.stderr))
        if not args.json:
            print(file=sys.stderr)
        for row in rows:
            entry = {"image": row.image, **(row.prediction.to_dict() if row.prediction else {"problem": row.problem})}
            results.append(entry)
            if not args.json:
                shown = f"{row.prediction.top_class} ({row.prediction.confidence:.1%})" if row.prediction else row.problem
                print(plain(f"{row.image}: {shown}"))
        if args.csv:
            Path(args.csv).write_text(batch_csv(rows, predictor.labels))
    else:
        from tlcore.predict import BatchRow

        rows = []
        for image in args.images:
            prediction = predictor.predict([image])[0]
            rows.append(BatchRow(image, prediction))
            results.append({"image": image, **prediction.to_dict()})
            if not args.json:
                shares = "  ".join(f"{name} {p:.1%}" for name, p in prediction.probabilities.items())
                print(plain(f"{image}: {prediction.top_class} ({prediction.confidence:.1%})  [{shares}]"))
        if args.csv:
            Path(args.csv).write_text(batch_csv(rows, predictor.labels))
    return {"run_dir": args.run_dir, "predictions": results, **({"csv": args.csv} if args.csv else {})}


def _cmd_explain(args) -> dict:
    from tlcore.explain import explainer

    out = Path(args.out) if args.out else Path.cwd()
    out.mkdir(parents=True, exist_ok=True)
    model = explainer(args.run_dir, args.layer)
    results = []
    for image in args.images:
        explanation = model.explain(image, args.class_name)
        target = out / f"{Path(image).stem}-gradcam.png"
        explanation.overlay.save(target)
        results.append({"image": image, **explanation.to_dict(str(target))})
        if not args.json:
            print(plain(f"{image}: {explanation.prediction.top_class}; evidence for {explanation.class_name} "
                        f"at {explanation.layer}: {target}"))
    return {"run_dir": args.run_dir, "explanations": results}


def _cmd_evaluate(args) -> dict:
    from tlcore.dataset import load_dataset
    from tlcore.evaluate import evaluate
    from tlcore.runs import Run

    run = Run.open(args.run_dir)
    dataset = None
    if args.data is not None:
        settings = run.train_config
        dataset = load_dataset(args.data, val_split=settings.val_split, seed=settings.seed)
    elif args.all:
        raise TransferLabError("--all scores every image of a dataset: give its folder or zip too.")
    result = evaluate(run.path, dataset, subset="all" if args.all else args.split)
    if not args.json:
        print(f"Scored: {result.split} images ({result.total})")
        print(f"Accuracy: {result.accuracy:.4f}")
        print(plain(result.per_class_frame().to_string(index=False)))
        print("Confusion matrix (rows: true class, columns: predicted):")
        for name, row in zip(result.classes, result.confusion_matrix):
            print(f"  {plain(name):>20}: {row}")
    return result.to_dict()


def _cmd_export(args) -> dict:
    from tlcore.exports import export_run

    def progress(name, done, total):
        if name and not args.json:
            print(f"exporting {name} ({done + 1} of {total})...", file=sys.stderr)

    report = export_run(args.run_dir, args.out, args.formats, progress)
    if not args.json:
        print(f"Bundle: {plain(report['out'])}")
        for name, figures in report["formats"].items():
            agreement = figures.get("top1_agreement")
            extra = f", top-1 agreement {agreement:.1%}" if agreement is not None else ""
            print(f"  {name:<12} {figures['file']:<20} {figures['bytes'] / 1e6:8.2f} MB  {figures['seconds']:6.1f} s{extra}")
        from tlcore.exports.formats import agreement_note

        note = agreement_note(report)
        if note:
            print(note)
    return report


def _cmd_code(args) -> dict:
    from tlcore.exports.script import training_script

    sys.stdout.write(training_script(args.run_dir))
    return None


def _cmd_inspect(args) -> dict:
    from tlcore.dataset import load_dataset
    from tlcore.health import health_report

    report = health_report(load_dataset(args.data, val_split=args.val_split, seed=args.seed))
    if not args.json:
        print(plain(report.to_text()))
    return report.to_dict()


COMMANDS = {
    "layers": _cmd_layers,
    "summary": _cmd_summary,
    "train": _cmd_train,
    "predict": _cmd_predict,
    "evaluate": _cmd_evaluate,
    "inspect": _cmd_inspect,
    "export": _cmd_export,
    "explain": _cmd_explain,
    "code": _cmd_code,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = COMMANDS[args.command](args)
    except TransferLabError as error:
        if getattr(args, "json", False):
            print(json.dumps({"error": str(error)}))
        print(f"Error: {plain(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001  (no traceback for users; TLCORE_DEBUG=1 shows it)
        if os.environ.get("TLCORE_DEBUG"):
            raise
        message = f"Something went wrong inside Transfer Lab ({type(error).__name__}: {str(error)[:200]})."
        if getattr(args, "json", False):
            print(json.dumps({"error": message}))
        print(f"Error: {plain(message)} Run again with TLCORE_DEBUG=1 to see the details.", file=sys.stderr)
        return 3
    exit_code = result.pop("exit_code", 0) if isinstance(result, dict) else 0
    if getattr(args, "json", False) and result is not None:
        sys.stdout.flush()
        print(json.dumps(result, default=_json_default))
    return exit_code


def plain(text) -> str:
    """Text safe for a terminal: control characters a user's file or folder name may hold are shown escaped."""
    return "".join(c if c in "\n\t" or c.isprintable() else repr(c)[1:-1] for c in str(text))


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def run() -> None:
    """The `tlcore` command installed by the package: `python -m tlcore`."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
