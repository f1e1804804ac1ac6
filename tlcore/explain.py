"""Why a model decided: Grad-CAM heatmaps of the evidence for a class, from a run's own saved model.

The saved model is resizing and preprocessing, then the backbone, then the head. The class
score's gradient with respect to the backbone's output (its cut layer, or an earlier
convolutional layer inside it) weighs each feature channel; the weighted sum of the channels,
negative parts removed, says where in the picture the evidence lies (Selvaraju et al., 2017,
as in the keras.io Grad-CAM example). The score is the class's logit, before the sigmoid or
softmax, so a confident prediction still has gradients.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tlcore.errors import ModelConfigError
from tlcore.images import load_array
from tlcore.predict import Prediction, get_predictor

OVERLAY_OPACITY = 0.45


@dataclass(frozen=True)
class Explanation:
    """Where the evidence for `class_name` lies in one picture.

    Attributes:
        prediction: What the model says the picture shows.
        class_name: The class explained (the predicted one unless another was asked for).
        layer: The layer whose feature map the heatmap is on.
        heatmap: Values in [0, 1], one per position of that layer's map, rows first.
        overlay: The picture with the heatmap laid over it.
    """

    prediction: Prediction
    class_name: str
    layer: str
    heatmap: np.ndarray
    overlay: Image.Image

    def to_dict(self, overlay_path: str | None = None) -> dict:
        return {
            "top_class": self.prediction.top_class,
            "class": self.class_name,
            "probabilities": self.prediction.probabilities,
            "layer": self.layer,
            "heatmap": np.round(self.heatmap, 4).tolist(),
            "overlay": overlay_path,
        }


class Explainer:
    """Grad-CAM on a loaded run: the model split into what comes before the backbone, the backbone, and the head.

    Args:
        run_dir: The run folder.
        layer: A convolutional layer inside the backbone to explain at; the cut layer (the
            backbone's output) by default.

    Raises:
        RunError: the run has no usable model.
        ModelConfigError: `layer` is not a layer of the backbone with a feature map.
    """

    def __init__(self, run_dir: str | Path, layer: str | None = None):
        import keras

        self.predictor = get_predictor(run_dir)
        model = self.predictor.model
        self.labels = self.predictor.labels
        layers = model.layers
        backbone_index = next(
            (i for i, layer_ in enumerate(layers) if isinstance(layer_, keras.Model) and layer_.name == "backbone"), None)
        if backbone_index is None or backbone_index + 1 >= len(layers):
            raise ModelConfigError("This model has no backbone and head to explain with.")
        self.before = layers[1:backbone_index]  # resizing and the backbone's own preprocessing
        backbone, head = layers[backbone_index], layers[backbone_index + 1]
        if layer is None:
            self.layer = backbone.layers[-1].name
            self.body = backbone
            self.after_layer = None
        else:
            try:
                chosen = backbone.get_layer(layer)
            except ValueError:
                raise ModelConfigError(f"The backbone has no layer `{layer}`.") from None
            if len(chosen.output.shape) != 4:
                raise ModelConfigError(f"Layer `{layer}` has no image-shaped feature map to explain with.")
            self.body = keras.Model(backbone.inputs, [chosen.output, backbone.output])
            self.after_layer = layer
            self.layer = layer
        self.head = head
        # The head's last layer turns logits into probabilities; its score before that is explained.
        self.last = head.layers[-1]
        self.logits_input = keras.Model(head.inputs, self.last.input) if len(head.layers) > 2 else None
        self.lock = threading.Lock()

    def _score(self, features, index: int):
        import keras

        hidden = self.logits_input(features, training=False) if self.logits_input is not None else features
        logits = keras.ops.matmul(hidden, self.last.kernel) + self.last.bias
        if logits.shape[-1] == 1:
            # One sigmoid unit: its logit is the evidence for labels[1], its negative for labels[0].
            return logits[:, 0] if index == 1 else -logits[:, 0]
        return logits[:, index]

    def heatmap(self, image: np.ndarray, class_name: str | None = None) -> tuple[np.ndarray, Prediction, str]:
        """The Grad-CAM heatmap of one uint8 RGB image for `class_name` (the predicted class by default)."""
        import tensorflow as tf

        prediction = self.predictor.predict([image])[0]
        class_name = prediction.top_class if class_name is None else class_name
        if class_name not in self.labels:
            raise ModelConfigError(f"Unknown class `{class_name}`. The model knows: {', '.join(self.labels)}.")
        index = self.labels.index(class_name)
        x = self.predictor.resize(image)[None]
        with self.lock:
            for layer in self.before:
                x = layer(x)
            with tf.GradientTape() as tape:
                # Watching the input records every step, so the gradient reaches any layer inside.
                tape.watch(x)
                if self.after_layer is None:
                    maps = features = self.body(x, training=False)
                else:
                    maps, features = self.body(x, training=False)
                score = self._score(features, index)
            gradients = tape.gradient(score, maps)
        weights = tf.reduce_mean(gradients, axis=(0, 1, 2))
        cam = tf.nn.relu(tf.reduce_sum(maps[0] * weights, axis=-1)).numpy().astype("float64")
        peak = cam.max()
        return (cam / peak if peak > 0 else cam), prediction, class_name

    def explain(self, source, class_name: str | None = None) -> Explanation:
        """Grad-CAM of one picture (a path, bytes or Pillow image), with its overlay."""
        image = load_array(source)
        heat, prediction, class_name = self.heatmap(image, class_name)
        return Explanation(prediction, class_name, self.layer, heat, overlay(image, heat))


def overlay(image: np.ndarray, heatmap: np.ndarray, opacity: float = OVERLAY_OPACITY) -> Image.Image:
    """The picture with the heatmap laid over it in colour, blue for none of the evidence to red for all."""
    height, width = image.shape[:2]
    heat = Image.fromarray(np.uint8(np.clip(heatmap, 0, 1) * 255)).resize((width, height), Image.BILINEAR)
    colours = _colour_map(np.asarray(heat, dtype=np.float32) / 255.0)
    blended = image.astype(np.float32) * (1 - opacity) + colours * opacity
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))


def _colour_map(values: np.ndarray) -> np.ndarray:
    """A blue-cyan-yellow-red scale (like matplotlib's "jet"), as RGB 0-255."""
    r = np.clip(1.5 - np.abs(4 * values - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * values - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * values - 1), 0, 1)
    return np.stack([r, g, b], axis=-1) * 255.0


_EXPLAINERS: dict[tuple[str, int | None, str | None], Explainer] = {}
_EXPLAINERS_LOCK = threading.Lock()


def explainer(run_dir: str | Path, layer: str | None = None) -> Explainer:
    """The run's `Explainer`, made once per saved model and layer."""
    from tlcore.runs import Run

    run = Run(run_dir)
    key = (str(run.path.resolve()), run.model_stamp(), layer)
    with _EXPLAINERS_LOCK:
        found = _EXPLAINERS.get(key)
    if found is None:
        found = Explainer(run_dir, layer)
        with _EXPLAINERS_LOCK:
            if len(_EXPLAINERS) >= 8:
                _EXPLAINERS.clear()
            _EXPLAINERS[key] = found
    return found


def explain(run_dir: str | Path, source, class_name: str | None = None, layer: str | None = None) -> Explanation:
    """Where the evidence for a class (the predicted one by default) lies in a picture; see `Explainer`."""
    return explainer(run_dir, layer).explain(source, class_name)
