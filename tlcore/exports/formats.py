"""The export formats: one writer each, turning a run's saved model into a file another program can load."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlcore.errors import TransferLabError


class ExportError(TransferLabError):
    """A format that cannot be written here, with what to install or do."""


@dataclass(frozen=True)
class ExportContext:
    """What a writer needs: the loaded model and what it was trained on.

    Attributes:
        model: The run's Keras model (raw RGB images of any size in, probabilities out).
        input_size: The side images are resized to.
        calibration: Training images at the input size (float32, 0-255), for quantisation.
        check: Validation images at the input size, for measuring a quantised model.
    """

    model: object
    input_size: int
    calibration: Callable[[], np.ndarray]
    check: Callable[[], np.ndarray]


@dataclass(frozen=True)
class ExportFormat:
    """One format a run can be exported in.

    Attributes:
        name: The key on the command line (`--format`) and in `metadata.json`.
        file: The file (or folder) written in the bundle.
        title: What people call it.
        needs: Python modules the export needs, with the pip package to install for each.
        runtime: What loads it elsewhere, for `metadata.json` and the bundle's README.
        write: `write(context, path) -> dict` writes it and returns figures about it.
    """

    name: str
    file: str
    title: str
    needs: dict[str, str]
    runtime: str
    write: Callable[[ExportContext, Path], dict]

    def check_available(self) -> None:
        """Raises `ExportError` naming the package to install when a module the export needs is missing."""
        missing = [package for module, package in self.needs.items() if importlib.util.find_spec(module) is None]
        if missing:
            raise ExportError(
                f"The {self.title} export needs the package(s) {', '.join(f'`{p}`' for p in missing)}: "
                f"install them with `pip install {' '.join(missing)}` (or `pip install 'transfer-lab[export]'`)."
            )


def _archive(model, signatures: dict):
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, (function, spec) in signatures.items():
        archive.add_endpoint(name, function, input_signature=[spec])
    return archive


def _float_images(size: int | None = None, batch: int | None = None):
    import tensorflow as tf

    return tf.TensorSpec([batch, size, size, 3], tf.float32)


def write_keras(context: ExportContext, path: Path) -> dict:
    context.model.save(path)
    return {}


def write_savedmodel(context: ExportContext, path: Path) -> dict:
    import tensorflow as tf

    model = context.model
    signatures = {
        "serve": (lambda images: model(images, training=False), _float_images()),
        "serve_uint8": (lambda images: model(tf.cast(images, tf.float32), training=False),
                        tf.TensorSpec([None, None, None, 3], tf.uint8)),
    }
    _archive(model, signatures).write_out(str(path), verbose=False)
    return {"signatures": sorted(signatures)}


def write_tflite(context: ExportContext, path: Path) -> dict:
    # A fixed input shape: mobile toolkits expect one.
    context.model.export(str(path), format="litert", verbose=False,
                         input_signature=[_float_images(context.input_size, 1)])
    return {"input_shape": [1, context.input_size, context.input_size, 3]}


def write_tflite_int8(context: ExportContext, path: Path) -> dict:
    """Full-integer quantisation calibrated on the run's own training images, and its agreement with the float model."""
    import tempfile

    import tensorflow as tf

    model, size = context.model, context.input_size
    calibration = context.calibration()
    if not len(calibration):
        raise ExportError("The quantised export needs the run's training images, which are no longer on disk.")
    with tempfile.TemporaryDirectory() as folder:
        _archive(model, {"serve": (lambda images: model(images, training=False), _float_images(size, 1))}).write_out(
            folder, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=["serve"])
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
        path.write_bytes(converter.convert())
    return {"top1_agreement": _agreement(path, model, context.check()), "calibration_images": len(calibration)}


# Below this top-1 agreement with the float model, the quantised file is not a faithful copy.
GOOD_AGREEMENT = 0.97


def agreement_note(report: dict) -> str | None:
    """A warning when the full-integer model often answers differently from the float one, else None."""
    agreement = (report.get("formats", {}).get("tflite-int8") or {}).get("top1_agreement")
    if agreement is None or agreement >= GOOD_AGREEMENT:
        return None
    return (f"The full-integer LiteRT model gives the same top class as the full model on only {agreement:.0%} of "
            "the validation images: use model.tflite (float) unless the device needs integers only. "
            "A model trained longer, or a larger backbone, usually quantises better.")


def _agreement(path: Path, model, images: np.ndarray) -> float | None:
    """Share of `images` on which the quantised model's top class is the float model's."""
    if not len(images):
        return None
    interpreter = _interpreter(path)
    interpreter.allocate_tensors()
    given, taken = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    in_scale, in_zero = given["quantization"]
    out_scale, out_zero = taken["quantization"]
    expected = np.asarray(model.predict(images, verbose=0, batch_size=32))
    same = 0
    for image, reference in zip(images, expected):
        quantised = np.clip(np.round(image / in_scale + in_zero), 0, 255).astype(np.uint8)[None]
        interpreter.set_tensor(given["index"], quantised)
        interpreter.invoke()
        got = (interpreter.get_tensor(taken["index"]).astype(np.float32) - out_zero) * out_scale
        same += int(_top(got[0]) == _top(reference))
    return same / len(images)


def _top(row: np.ndarray) -> int:
    return int(row[0] > 0.5) if len(row) == 1 else int(np.argmax(row))


def _interpreter(path: Path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806
    return Interpreter(model_path=str(path))


def write_onnx(context: ExportContext, path: Path) -> dict:
    context.model.export(str(path), format="onnx", verbose=False, input_signature=[_float_images()])
    return {}


FORMATS: dict[str, ExportFormat] = {
    fmt.name: fmt
    for fmt in (
        ExportFormat("keras", "model.keras", "Keras", {"keras": "keras"}, "keras (with tensorflow)", write_keras),
        ExportFormat("savedmodel", "saved_model", "TensorFlow SavedModel", {"tensorflow": "tensorflow"},
                     "tensorflow", write_savedmodel),
        ExportFormat("tflite", "model.tflite", "LiteRT (TFLite)", {"tensorflow": "tensorflow"},
                     "ai-edge-litert, or tensorflow", write_tflite),
        ExportFormat("tflite-int8", "model_int8.tflite", "LiteRT (TFLite) full-integer", {"tensorflow": "tensorflow"},
                     "ai-edge-litert, or tensorflow", write_tflite_int8),
        ExportFormat("onnx", "model.onnx", "ONNX", {"tf2onnx": "tf2onnx", "onnx": "onnx"}, "onnxruntime", write_onnx),
    )
}


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
