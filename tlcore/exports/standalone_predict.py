"""Classifies images with an exported Transfer Lab model; needs only numpy, Pillow and one model runtime.

Copied as `predict.py` into every export bundle, next to `metadata.json`, `labels.txt` and the
model files. It imports nothing from Transfer Lab.

    python predict.py [--format keras|savedmodel|tflite|tflite-int8|onnx] IMAGE ... [--json]

Each image is read as Transfer Lab reads it (upright by its EXIF orientation, first frame,
transparency dropped, 16-bit scaled to 8 bits) and, for the fixed-size formats, resized exactly
as the model's own Resizing layer would (bilinear, half-pixel centres, no antialiasing).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent
# Formats in the order they are tried when none is asked for: the lightest runtime first.
PREFERENCE = ("tflite", "onnx", "keras", "savedmodel", "tflite-int8")


def load_rgb(path: str) -> np.ndarray:
    """An image file as an upright uint8 RGB array, as Transfer Lab reads it."""
    with Image.open(path) as image:
        image.seek(0)
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode.startswith("I;16"):
            levels = ((np.asarray(image, dtype=np.uint32) + 128) // 257).astype(np.uint8)
            image = Image.fromarray(levels)
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resizes like `tf.image.resize(method="bilinear", antialias=False)`: half-pixel centres, edges clamped."""
    image = image.astype(np.float32)
    in_h, in_w = image.shape[:2]

    def axis(out_size: int, in_size: int):
        position = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
        floor = np.floor(position)
        low = np.clip(floor, 0, in_size - 1).astype(np.int64)
        high = np.clip(np.ceil(position), 0, in_size - 1).astype(np.int64)
        return low, high, (position - floor).astype(np.float32)

    top, bottom, dy = axis(height, in_h)
    left, right, dx = axis(width, in_w)
    dx = dx[None, :, None]
    upper = image[top][:, left] + (image[top][:, right] - image[top][:, left]) * dx
    lower = image[bottom][:, left] + (image[bottom][:, right] - image[bottom][:, left]) * dx
    return upper + (lower - upper) * dy[:, None, None]


class Model:
    """One exported format, loaded with its runtime; `__call__` gives class probabilities of one image."""

    def __init__(self, format_name: str, metadata: dict):
        self.format = format_name
        self.size = int(metadata["input_size"])
        self.binary = metadata["output"] == "sigmoid"
        file = HERE / metadata["files"][format_name]
        if format_name in ("tflite", "tflite-int8"):
            try:
                from ai_edge_litert.interpreter import Interpreter
            except ImportError:
                from tensorflow.lite import Interpreter  # noqa: F401  (TensorFlow's own copy of LiteRT)
            self.interpreter = Interpreter(model_path=str(file))
            self.interpreter.allocate_tensors()
            self.input = self.interpreter.get_input_details()[0]
            self.output = self.interpreter.get_output_details()[0]
        elif format_name == "onnx":
            import onnxruntime

            self.session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
            self.input_name = self.session.get_inputs()[0].name
        elif format_name == "keras":
            import keras

            self.keras_model = keras.saving.load_model(str(file), safe_mode=True)
        elif format_name == "savedmodel":
            import tensorflow as tf

            self.saved = tf.saved_model.load(str(file))
        else:
            raise ValueError(f"Unknown format `{format_name}`.")

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if self.format in ("tflite", "tflite-int8"):
            batch = resize_bilinear(image, self.size, self.size)[None]
            if self.input["dtype"] == np.uint8:
                scale, zero = self.input["quantization"]
                batch = np.clip(np.round(batch / scale + zero), 0, 255).astype(np.uint8)
            self.interpreter.set_tensor(self.input["index"], batch.astype(self.input["dtype"]))
            self.interpreter.invoke()
            raw = self.interpreter.get_tensor(self.output["index"])
            if self.output["dtype"] == np.uint8:
                scale, zero = self.output["quantization"]
                raw = (raw.astype(np.float32) - zero) * scale
        elif self.format == "onnx":
            raw = self.session.run(None, {self.input_name: image[None].astype(np.float32)})[0]
        elif self.format == "keras":
            raw = np.asarray(self.keras_model(image[None].astype(np.float32), training=False))
        else:
            raw = self.saved.serve(image[None].astype(np.float32)).numpy()
        raw = np.asarray(raw, dtype=np.float64)[0]
        return np.array([1.0 - raw[0], raw[0]]) if self.binary else raw


def available(metadata: dict) -> list[str]:
    """The formats this bundle holds, in the order of `PREFERENCE`."""
    return [name for name in PREFERENCE if name in metadata["files"] and (HERE / metadata["files"][name]).exists()]


def main(argv: list[str] | None = None) -> int:
    metadata = json.loads((HERE / "metadata.json").read_text())
    labels = [line for line in (HERE / "labels.txt").read_text().splitlines() if line]
    parser = argparse.ArgumentParser(description="Classify images with this exported model.")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--format", choices=sorted(metadata["files"]), default=None,
                        help="which model file to use; the first that loads, by default")
    parser.add_argument("--json", action="store_true", help="print one JSON list as the last line")
    args = parser.parse_args(argv)
    model, problems = None, []
    for name in [args.format] if args.format else available(metadata):
        try:
            model = Model(name, metadata)
            break
        except ImportError as error:
            problems.append(f"{name}: needs `{error.name}` ({metadata['runtimes'].get(name, '')})")
    if model is None:
        print("No model could be loaded here. " + "; ".join(problems), file=sys.stderr)
        return 2
    results = []
    for path in args.images:
        try:
            probabilities = model(load_rgb(path))
        except (OSError, ValueError) as error:
            print(f"{path}: cannot be read as an image ({error})", file=sys.stderr)
            continue
        best = int(np.argmax(probabilities))
        results.append({"image": path, "top_class": labels[best],
                        "probabilities": {name: float(p) for name, p in zip(labels, probabilities)}})
        if not args.json:
            print(f"{path}: {labels[best]} ({probabilities[best]:.1%})")
    if args.json:
        print(json.dumps(results))
    return 0 if len(results) == len(args.images) else 1


if __name__ == "__main__":
    sys.exit(main())
