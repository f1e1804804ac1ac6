"""Exports of a trained run that work without Transfer Lab: model files, their metadata, a standalone predict.py.

`export_run` writes a bundle folder: one file per format (`formats.FORMATS`), `labels.txt`,
`metadata.json` (classes, input size, the preprocessing contract, how it was trained),
`README.md` and `predict.py` (numpy, Pillow and one runtime). A new format is one writer in
`formats.py` and one entry in `FORMATS`.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

import tlcore
from tlcore.backbones import get_backbone
from tlcore.exports.formats import FORMATS, ExportContext, ExportError, remove
from tlcore.runs import Run

__all__ = ["FORMATS", "ExportError", "bundle_zip", "default_formats", "export_run"]

CALIBRATION_IMAGES = 200
CHECK_IMAGES = 400
PREDICT_SCRIPT = Path(__file__).with_name("standalone_predict.py")

_PREPROCESSING = {
    "tf": "the model scales RGB values 0-255 to [-1, 1] itself (a Rescaling layer)",
    "torch": "the model normalises RGB values 0-255 with ImageNet's mean and standard deviation itself "
    "(a Normalization layer)",
    "none": "the backbone rescales RGB values 0-255 inside itself",
}


def default_formats() -> list[str]:
    """Every format whose export can run here (its packages are installed)."""
    found = []
    for name, fmt in FORMATS.items():
        try:
            fmt.check_available()
        except ExportError:
            continue
        found.append(name)
    return found


def _images(items, size: int, limit: int) -> np.ndarray:
    """Up to `limit` of the items' images, spread over the list, resized as the model resizes."""
    import tensorflow as tf

    from tlcore.images import ImageError, load_array

    items = [item for item in items if item.path and Path(item.path).is_file()]
    if len(items) > limit:
        items = [items[int(i)] for i in np.linspace(0, len(items) - 1, limit)]
    out = []
    for item in items:
        try:
            pixels = load_array(item.path).astype("float32")
        except (ImageError, OSError):
            continue
        out.append(tf.image.resize(pixels, (size, size), method="bilinear", antialias=False).numpy())
    return np.stack(out) if out else np.zeros((0, size, size, 3), "float32")


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    formats: Sequence[str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Writes a run's export bundle.

    Args:
        run_dir: The run folder.
        out_dir: The bundle folder to write (created; files of the same names are replaced).
        formats: Names from `FORMATS`; every format that can be written here by default.
        progress: Called as `progress(format, done, total)` before each format.

    Returns:
        The report: `out`, and per format its `file`, `bytes`, `seconds` and figures such as the
        quantised model's `top1_agreement`.

    Raises:
        ExportError: an unknown format, or one whose packages are missing.
        RunError: the run has no usable model.
    """
    run = Run.open(run_dir)
    chosen = list(formats) if formats else default_formats()
    unknown = [name for name in chosen if name not in FORMATS]
    if unknown:
        raise ExportError(f"Unknown export format `{unknown[0]}`. Choose from: {', '.join(FORMATS)}.")
    for name in chosen:
        FORMATS[name].check_available()
    model = run.load_model()
    labels = run.labels()
    config = run.model_config.resolved()
    size = int(config.input_size)
    split = run.split()
    context = ExportContext(
        model=model,
        input_size=size,
        calibration=lambda: _images(split.train if split else (), size, CALIBRATION_IMAGES),
        check=lambda: _images(split.validation if split else (), size, CHECK_IMAGES),
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"out": str(out), "run": run.name, "formats": {}}
    for done, name in enumerate(chosen):
        if progress is not None:
            progress(name, done, len(chosen))
        fmt = FORMATS[name]
        target = out / fmt.file
        remove(target)
        started = time.perf_counter()
        info = fmt.write(context, target)
        report["formats"][name] = {"file": fmt.file, "bytes": _bytes(target),
                                   "seconds": round(time.perf_counter() - started, 2), **info}
    _write_bundle_files(run, out, labels, config, report)
    if progress is not None:
        progress("", len(chosen), len(chosen))
    return report


def _bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def metadata(run: Run, labels, config, files: dict[str, str]) -> dict:
    """What a program needs to use the exported model correctly, and how it was made."""
    spec = get_backbone(config.backbone)
    history = run.history()
    binary = len(labels) == 2
    return {
        "transfer_lab_version": tlcore.__version__,
        "run": run.name,
        "classes": list(labels),
        "input_size": config.input_size,
        "output": "sigmoid" if binary else "softmax",
        "output_meaning": (f"one number: the probability of `{labels[1]}` (1 minus it is `{labels[0]}`)" if binary
                           else "one probability per class, in the order of `classes` and labels.txt"),
        "preprocessing": {
            "input": "RGB pixels 0-255 as float32, shape (batch, height, width, 3), any height and width "
                     "(keras, savedmodel, onnx); the tflite files take exactly (1, input_size, input_size, 3), "
                     "float32 for tflite and uint8 for tflite-int8",
            "resize": "bilinear with half-pixel centres and no antialiasing (tf.image.resize's default), to "
                      "input_size x input_size; inside the model for keras, savedmodel and onnx",
            "scaling": _PREPROCESSING[spec.preprocess_mode],
            "image_reading": "upright by EXIF orientation, first frame only, transparency dropped, 16-bit scaled "
                             "to 8 bits (see predict.py)",
        },
        "backbone": {"name": spec.name, "display_name": spec.display_name, "alpha": config.alpha,
                     "cut_layer": config.cut_layer, "weights": config.weights if config.weights in ("imagenet", "none")
                     else "file"},
        "head": {"pooling": config.pooling, "dense_units": list(config.dense_units), "dropout": config.dropout},
        "training": run.train_config.to_dict(),
        "validation_accuracy": history.final().get("val_accuracy"),
        "files": files,
        "runtimes": {name: FORMATS[name].runtime for name in files},
    }


def _write_bundle_files(run: Run, out: Path, labels, config, report: dict) -> None:
    files = {name: FORMATS[name].file for name in FORMATS if (out / FORMATS[name].file).exists()}
    (out / "labels.txt").write_text("".join(f"{name}\n" for name in labels))
    (out / "metadata.json").write_text(json.dumps(metadata(run, labels, config, files), indent=2))
    (out / "predict.py").write_text(PREDICT_SCRIPT.read_text())
    (out / "README.md").write_text(_readme(run, labels, config, files, report))


def _readme(run: Run, labels, config, files: dict[str, str], report: dict) -> str:
    size = config.input_size
    lines = [
        f"# {run.name}: an image classifier made with Transfer Lab",
        "",
        f"Classes, in output order: {', '.join(labels)} (also in `labels.txt`). Input: RGB images; the model "
        f"works at {size}x{size} pixels. Everything a program needs to know is in `metadata.json`.",
        "",
        "## Try it",
        "",
        "```bash",
        "pip install numpy pillow ai-edge-litert   # or onnxruntime, or tensorflow",
        "python predict.py photo.jpg another.png          # add --json for machine-readable output",
        "```",
        "",
        "## The files",
        "",
    ]
    notes = {
        "keras": f"`{files.get('keras')}`: load with `keras.saving.load_model(path)` (built-in Keras layers only); "
                 "call it on float32 RGB images 0-255 of any size, shape (batch, height, width, 3).",
        "savedmodel": f"`{files.get('savedmodel')}/`: TensorFlow SavedModel, `tf.saved_model.load(path)`; "
                      "`.serve(float32 images)` or `.serve_uint8(uint8 images)`, any size; TensorFlow Serving too.",
        "tflite": f"`{files.get('tflite')}`: LiteRT (TFLite) for phones and small devices; input float32 "
                  f"(1, {size}, {size}, 3) RGB 0-255, resized beforehand as described in `metadata.json`.",
        "tflite-int8": f"`{files.get('tflite-int8')}`: full-integer LiteRT, about four times smaller; input uint8 "
                       f"(1, {size}, {size}, 3), output uint8 (dequantise with the output's scale and zero point).",
        "onnx": f"`{files.get('onnx')}`: ONNX, for ONNX Runtime and other ONNX tools; input float32 RGB 0-255 of "
                "any size, shape (batch, height, width, 3).",
    }
    for name in files:
        figures = report["formats"].get(name, {})
        extra = f" Top-1 agreement with the float model: {figures['top1_agreement']:.1%}." if figures.get(
            "top1_agreement") is not None else ""
        lines.append(f"- {notes[name]}{extra}")
    return "\n".join(lines) + "\n"


def bundle_zip(out_dir: str | Path) -> bytes:
    """A bundle folder as one zip, for download."""
    out = Path(out_dir)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(out.rglob("*")):
            if path.is_file():
                archive.write(path, f"{out.name}/{path.relative_to(out).as_posix()}")
    return buffer.getvalue()
