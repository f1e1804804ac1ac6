"""Tests of `tlcore.evaluate`: scores, confusion matrix and mistakes match a hand computation."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from test_predict import (
    colour_model,
    expected_colour_probabilities,
    make_run,
    random_image,
    three_class_run,  # noqa: F401  (fixture)
    write_png,
)
from tlcore.dataset import Dataset
from tlcore.errors import DatasetError, RunError, TransferLabError
from tlcore.evaluate import Evaluation, Misclassified, evaluate
from tlcore.predict import Predictor, forget_predictors

CLASSES = ["red", "green", "blue"]
# File name, solid colour, and the class it is labelled with. A solid colour keeps its mean
# through any resize, so `expected_colour_probabilities` says exactly what the model answers.
IMAGES = [
    ("r1.png", (200, 30, 20), "red"),
    ("r2.png", (120, 90, 40), "red"),
    ("r3.png", (90, 100, 20), "red"),  # Greener than red: predicted green.
    ("g1.png", (10, 220, 30), "green"),
    ("g2.png", (60, 70, 65), "green"),
    ("b1.png", (20, 40, 230), "blue"),
    ("b2.png", (150, 20, 100), "blue"),  # Redder than blue: predicted red.
]


def solid(colour, height: int = 12, width: int = 9) -> np.ndarray:
    return np.broadcast_to(np.array(colour, "uint8"), (height, width, 3)).copy()


def write_images(folder: Path, images=IMAGES) -> list[tuple[str, int]]:
    """Writes solid-colour PNGs of varied sizes; returns `(path, label)` items."""
    items = []
    for index, (name, colour, label) in enumerate(images):
        path = write_png(folder / label / name, solid(colour, 10 + index, 7 + 2 * index))
        items.append((str(path), CLASSES.index(label)))
    return items


def by_hand(images=IMAGES, folder: Path | None = None) -> dict:
    """Accuracy, per-class scores, matrix and mistakes, computed without the code under test."""
    true = [CLASSES.index(label) for _, _, label in images]
    rows = [expected_colour_probabilities(solid(colour)) for _, colour, _ in images]
    predicted = [int(np.argmax(row)) for row in rows]
    n = len(CLASSES)
    matrix = [[0] * n for _ in range(n)]
    for t, p in zip(true, predicted):
        matrix[t][p] += 1
    precision, recall = [], []
    for c in range(n):
        hits = matrix[c][c]
        predicted_as = sum(matrix[t][c] for t in range(n))
        actual = sum(matrix[c])
        precision.append(hits / predicted_as if predicted_as else 0.0)
        recall.append(hits / actual if actual else 0.0)
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(precision, recall)]
    mistakes = {
        name: (CLASSES[t], CLASSES[p], float(max(row)))
        for (name, _, _), t, p, row in zip(images, true, predicted, rows)
        if t != p
    }
    return {
        "accuracy": sum(t == p for t, p in zip(true, predicted)) / len(true),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": [sum(row) for row in matrix],
        "matrix": matrix,
        "mistakes": mistakes,
    }


@pytest.fixture
def colour_run(tmp_path):
    forget_predictors()
    items = write_images(tmp_path / "data")
    split = {"classes": CLASSES, "train": [], "validation": [list(item) for item in items]}
    return make_run(tmp_path / "run", colour_model(), CLASSES, {"input_size": 8}, split)


def assert_matches(evaluation: Evaluation, expected: dict) -> None:
    assert evaluation.accuracy == pytest.approx(expected["accuracy"])
    np.testing.assert_allclose(evaluation.precision, expected["precision"])
    np.testing.assert_allclose(evaluation.recall, expected["recall"])
    np.testing.assert_allclose(evaluation.f1, expected["f1"])
    assert list(evaluation.support) == expected["support"]
    assert evaluation.confusion_matrix == expected["matrix"]
    found = {Path(m.path).name: m for m in evaluation.misclassified}
    assert set(found) == set(expected["mistakes"])
    for name, (true, predicted, confidence) in expected["mistakes"].items():
        assert (found[name].true_class, found[name].predicted_class) == (true, predicted)
        assert found[name].confidence == pytest.approx(confidence, abs=1e-5)


def test_run_validation_split_scores_match_hand_computation(colour_run):
    evaluation = evaluate(colour_run)
    expected = by_hand()
    assert expected["mistakes"].keys() == {"r3.png", "b2.png"}
    assert_matches(evaluation, expected)
    assert evaluation.classes == tuple(CLASSES)
    assert evaluation.total == len(IMAGES)
    assert evaluation.notes == ()
    # Row sums are the support; the matrix is square in label order.
    assert [sum(row) for row in evaluation.confusion_matrix] == list(evaluation.support)
    confidences = [m.confidence for m in evaluation.misclassified]
    assert confidences == sorted(confidences, reverse=True)


def test_missing_files_are_left_out_with_a_note(colour_run):
    split = json.loads((colour_run / "split.json").read_text())
    Path(split["validation"][0][0]).unlink()
    evaluation = evaluate(colour_run)
    assert evaluation.total == len(IMAGES) - 1
    assert_matches(evaluation, by_hand(IMAGES[1:]))
    assert len(evaluation.notes) == 1 and "r1.png" in evaluation.notes[0]


def test_dataset_classes_are_mapped_by_name_and_absent_classes_score_zero(colour_run, tmp_path):
    kept = [image for image in IMAGES if image[2] != "green"]
    items = write_images(tmp_path / "other", kept)
    # The dataset lists its classes in another order, and has no green images at all.
    order = ("blue", "red")
    relabelled = tuple((Path(path), order.index(CLASSES[label])) for path, label in items)
    dataset = Dataset(root=tmp_path / "other", classes=order, train=relabelled[:2], validation=relabelled[2:])
    evaluation = evaluate(colour_run, dataset, subset="all")
    expected = by_hand(kept)
    assert_matches(evaluation, expected)
    green = CLASSES.index("green")
    assert evaluation.support[green] == 0
    assert evaluation.recall[green] == 0.0
    assert evaluation.confusion_matrix[green] == [0, 0, 0]
    # By default the run's own validation images, found in the dataset by their bytes: the red
    # ones (the blue ones were drawn at other sizes here, so they are other pictures).
    default = evaluate(colour_run, dataset)
    assert default.split == "validation" and sorted(default.images) == ["red/r1.png", "red/r2.png", "red/r3.png"]
    with pytest.raises(ValueError, match="`tset`"):
        evaluate(colour_run, dataset, subset="tset")


def test_class_unknown_to_the_model_is_refused(colour_run, tmp_path):
    path = write_png(tmp_path / "purple" / "p.png", solid((120, 0, 120)))
    dataset = Dataset(root=tmp_path, classes=("purple", "red"), train=(), validation=((path, 0),))
    with pytest.raises(DatasetError, match="`purple`") as caught:
        evaluate(colour_run, dataset, subset="all")
    assert isinstance(caught.value, TransferLabError)


def test_unreadable_files_are_noted_and_other_formats_still_count(colour_run, tmp_path):
    folder = tmp_path / "formats"
    folder.mkdir()
    broken = folder / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    # A sound header but cut-off pixels: only a full decode, in the stream, finds out.
    truncated = folder / "truncated.png"
    buffer = io.BytesIO()
    Image.fromarray(random_image(64, 64, 1)).save(buffer, format="PNG")
    truncated.write_bytes(buffer.getvalue()[:2000])
    tiff, cmyk, rotated = folder / "red.tiff", folder / "blue.jpg", folder / "green.jpg"
    Image.fromarray(solid((210, 10, 10))).save(tiff)
    Image.fromarray(solid((10, 10, 210))).convert("CMYK").save(cmyk, quality=100)
    exif = Image.Exif()
    exif[0x0112] = 6  # Rotated: TensorFlow would ignore this, Pillow applies it.
    Image.fromarray(random_image(16, 24, 0)).save(rotated, exif=exif, quality=95)
    readable = ((tiff, 0), (cmyk, 2), (rotated, 1))
    dataset = Dataset(root=folder, classes=tuple(CLASSES), train=(), validation=((broken, 0), (truncated, 1), *readable))

    evaluation = evaluate(colour_run, dataset, subset="all")

    assert evaluation.total == 3
    assert len(evaluation.notes) == 1
    assert "2 image(s)" in evaluation.notes[0]
    assert "broken.png" in evaluation.notes[0] and "truncated.png" in evaluation.notes[0]
    # Every readable file scores exactly as the predictor scores it.
    predictions = Predictor.from_run(colour_run).predict([tiff, cmyk, rotated])
    wrong = {Path(m.path).name: m for m in evaluation.misclassified}
    for (path, label), prediction in zip(readable, predictions):
        if prediction.top_class == CLASSES[label]:
            assert path.name not in wrong
        else:
            assert wrong[path.name].confidence == pytest.approx(prediction.confidence, abs=1e-5)
    assert evaluation.confusion_matrix[0][0] == 1 and evaluation.confusion_matrix[2][2] == 1


def test_nothing_readable_is_a_plain_error(colour_run, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"nothing here")
    dataset = Dataset(root=tmp_path, classes=tuple(CLASSES), train=(), validation=((broken, 0),))
    with pytest.raises(DatasetError, match="nothing to evaluate"):
        evaluate(colour_run, dataset, subset="all")


def test_progress_is_reported_per_batch_up_to_the_total(colour_run):
    calls = []
    evaluate(colour_run, batch_size=3, on_progress=lambda done, total: calls.append((done, total)))
    assert calls == [(3, 7), (6, 7), (7, 7)]


def test_run_without_split_file_raises_run_error(colour_run):
    (colour_run / "split.json").unlink()
    with pytest.raises(RunError, match="no saved split"):
        evaluate(colour_run)


def test_binary_model_scores_the_second_label_as_positive(tmp_path):
    forget_predictors()
    images = [("a.png", (200, 10, 20), "red"), ("b.png", (10, 10, 200), "blue"), ("c.png", (100, 10, 150), "red")]
    items = write_images(tmp_path / "data", images)
    labels = ["blue", "red"]
    split = {"classes": CLASSES, "train": [], "validation": [list(item) for item in items]}
    run = make_run(tmp_path / "run", colour_model(binary=True), labels, {"input_size": 8}, split)
    evaluation = evaluate(run)
    assert evaluation.classes == ("blue", "red")
    assert evaluation.confusion_matrix == [[1, 0], [1, 1]]
    (mistake,) = evaluation.misclassified
    p_red = expected_colour_probabilities(solid((100, 10, 150)), binary=True)[1]
    assert mistake == Misclassified(items[2][0], "red", "blue", pytest.approx(1 - p_red, abs=1e-5), "c.png")


def test_real_backbone_agrees_with_predictor(three_class_run, tmp_path):
    forget_predictors()
    labels = json.loads((three_class_run / "labels.json").read_text())
    paths = [write_png(tmp_path / f"{i}.png", random_image(30 + 9 * i, 50, 20 + i)) for i in range(6)]
    items = tuple((path, i % 3) for i, path in enumerate(paths))
    dataset = Dataset(root=tmp_path, classes=tuple(labels), train=(), validation=items)
    evaluation = evaluate(three_class_run, dataset, subset="all", batch_size=4)
    predictions = Predictor.from_run(three_class_run).predict(paths)
    right = sum(p.top_class == labels[label] for p, (_, label) in zip(predictions, items))
    assert evaluation.accuracy == pytest.approx(right / len(items))
    wrong = {m.path: m.confidence for m in evaluation.misclassified}
    for prediction, (path, label) in zip(predictions, items):
        if prediction.top_class != labels[label]:
            assert wrong[str(path)] == pytest.approx(prediction.confidence, abs=1e-5)


def test_table_and_dict_forms(colour_run):
    evaluation = evaluate(colour_run)
    frame = evaluation.per_class_frame()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["class", "precision", "recall", "f1", "support"]
    assert list(frame["class"]) == CLASSES
    assert list(frame["support"]) == list(evaluation.support)
    data = json.loads(json.dumps(evaluation.to_dict()))
    assert data["accuracy"] == pytest.approx(evaluation.accuracy)
    assert data["confusion_matrix"] == evaluation.confusion_matrix
    assert data["total"] == len(IMAGES)
    assert {item["path"] for item in data["misclassified"]} == {m.path for m in evaluation.misclassified}
    assert set(data["misclassified"][0]) == {"path", "name", "true_class", "predicted_class", "confidence"}
    assert data["split"] == "validation" and sorted(data["images"]) == sorted(name for name, _, _ in IMAGES)
