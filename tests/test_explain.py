"""Grad-CAM points at the evidence; batch prediction writes every answer; the command line gives both."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from conftest_data import class_files, real_images, write_files

from tlcore import runs
from tlcore.explain import explain, explainer, overlay
from tlcore.model import ModelConfig
from tlcore.predict import batch_csv, predict_batch
from tlcore.training import TrainConfig, train

SIDE, PATCH = 224, 56


def striped_picture(rng, horizontal: bool) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Grey noise with a small striped patch somewhere: the stripes' direction is the class."""
    pixels = rng.integers(100, 156, (SIDE, SIDE, 1)).astype(np.uint8).repeat(3, axis=-1)
    x, y = (int(v) for v in rng.integers(0, SIDE - PATCH, 2))
    stripes = (np.arange(PATCH) // 4 % 2 * 255).astype(np.uint8)
    patch = np.tile(stripes[:, None], (1, PATCH)) if horizontal else np.tile(stripes[None, :], (PATCH, 1))
    pixels[y : y + PATCH, x : x + PATCH] = patch[..., None]
    return Image.fromarray(pixels), (x, y, x + PATCH, y + PATCH)


@pytest.fixture(scope="module")
def patches(tmp_path_factory, keras_home):
    """A run that tells horizontal from vertical stripes, and held-out pictures with their patch's box."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("patches")
    held_out = []
    for split, count in (("train", 120), ("validation", 20), ("held-out", 20)):
        for name in ("horizontal", "vertical"):
            for index in range(count):
                picture, box = striped_picture(rng, name == "horizontal")
                path = root / split / name / f"{index}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                picture.save(path)
                if split == "held-out":
                    held_out.append((path, name, box))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERAS_HOME", str(keras_home))
        job = train(root / "train", ModelConfig(input_size=SIDE, dense_units=(32,)), TrainConfig(epochs=8),
                    runs_dir=root / "runs", work_dir=root / "work")
    assert job.snapshot().status == runs.FINISHED, job.snapshot().message
    return job.run_dir, held_out


def cell_in_box(index: int, grid: tuple[int, int], box) -> bool:
    rows, columns = grid
    row, column = divmod(index, columns)
    height, width = SIDE / rows, SIDE / columns
    x0, y0, x1, y1 = box
    return column * width < x1 and (column + 1) * width > x0 and row * height < y1 and (row + 1) * height > y0


@pytest.mark.slow
def test_the_heatmap_points_at_the_evidence(patches):
    run_dir, held_out = patches
    rng = np.random.default_rng(1)
    hits = shuffled = right = 0
    for path, name, box in held_out:
        result = explain(run_dir, path)
        right += result.prediction.top_class == name
        assert result.heatmap.shape == (7, 7) and 0 <= result.heatmap.min() and result.heatmap.max() == pytest.approx(1)
        hits += cell_in_box(int(np.argmax(result.heatmap)), result.heatmap.shape, box)
        shuffled += cell_in_box(int(np.argmax(rng.permutation(result.heatmap.ravel()))), result.heatmap.shape, box)
    count = len(held_out)
    print(f"classified right {right}/{count}; heatmap maximum on the patch {hits}/{count}, shuffled {shuffled}/{count}")
    assert right / count >= 0.9
    assert hits / count >= 0.8
    assert shuffled / count <= 0.4


def test_any_class_and_an_earlier_layer_can_be_explained(patches):
    run_dir, held_out = patches
    path = held_out[0][0]
    other = explain(run_dir, path, class_name="vertical" if held_out[0][1] == "horizontal" else "horizontal")
    assert other.class_name != other.prediction.top_class
    earlier = explain(run_dir, path, layer="block_13_expand_relu")
    assert earlier.layer == "block_13_expand_relu" and earlier.heatmap.shape == (14, 14)
    assert earlier.overlay.size == Image.open(path).size
    with pytest.raises(Exception, match="no layer `nope`"):
        explainer(run_dir, "nope")
    with pytest.raises(Exception, match="Unknown class `cats`"):
        explain(run_dir, path, class_name="cats")


def test_a_softmax_head_of_three_classes_is_explained_too(flowers, real_weights, tmp_path):
    photos = {name: real_images(flowers / name, 12) for name in ("daisy", "rose", "tulip")}
    job = train(write_files(tmp_path / "flowers", class_files(photos)), ModelConfig(input_size=96, pooling="flatten"),
                TrainConfig(epochs=1), runs_dir=tmp_path / "runs", work_dir=tmp_path / "work")
    results = [explain(job.run_dir, photos["rose"][0], class_name=name) for name in ("daisy", "rose", "tulip")]
    for result in results:
        assert result.heatmap.shape == (3, 3) and np.isfinite(result.heatmap).all()
    assert not np.allclose(results[0].heatmap, results[1].heatmap), "another class, another map"


def test_the_overlay_colours_the_evidence_red():
    picture = np.full((40, 40, 3), 128, np.uint8)
    heat = np.zeros((4, 4))
    heat[0, 0] = 1.0
    shown = np.asarray(overlay(picture, heat)).astype(int)
    assert shown[2, 2, 0] > shown[2, 2, 2] and shown[38, 38, 2] > shown[38, 38, 0]


def test_explain_on_the_command_line(patches, tmp_path):
    run_dir, held_out = patches
    done = subprocess.run([sys.executable, "-m", "tlcore", "explain", str(run_dir), str(held_out[0][0]),
                           str(held_out[-1][0]), "--out", str(tmp_path), "--json"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])["explanations"]
    assert len(results) == 2
    for entry in results:
        heatmap = np.asarray(entry["heatmap"])
        assert heatmap.shape == (7, 7) and heatmap.min() >= 0 and heatmap.max() <= 1
        assert entry["top_class"] in ("horizontal", "vertical") and Path(entry["overlay"]).is_file()


def test_a_whole_zip_is_predicted_into_a_table(patches, tmp_path):
    run_dir, held_out = patches
    upload = tmp_path / "pictures.zip"
    with zipfile.ZipFile(upload, "w") as archive:
        for path, name, _ in held_out[:6]:
            archive.write(path, f"batch/{name}-{path.name}")
        archive.writestr("batch/broken.png", b"\x89PNG not really")
        archive.writestr("batch/notes.txt", "not a picture")
    seen = []
    rows = predict_batch(run_dir, upload, progress=lambda done, total: seen.append((done, total)), work_dir=tmp_path / "w")
    assert not list((tmp_path / "w").iterdir()), "the unpacked pictures are removed afterwards"
    assert seen[-1] == (7, 7) and len(rows) == 7
    broken = next(row for row in rows if row.image == "batch/broken.png")
    assert broken.prediction is None and "not an image" in broken.problem
    table = list(csv.DictReader(io.StringIO(batch_csv(rows, ["horizontal", "vertical"]))))
    assert list(table[0]) == ["image", "top_class", "confidence", "p_horizontal", "p_vertical", "problem"]
    good = [row for row in table if not row["problem"]]
    assert len(good) == 6
    for row in good:
        assert abs(float(row["p_horizontal"]) + float(row["p_vertical"]) - 1) < 1e-5
        assert row["top_class"] in row["image"], "these pictures are easy: each is named after its class"
    done = subprocess.run([sys.executable, "-m", "tlcore", "predict", str(run_dir), str(upload), "--csv",
                           str(tmp_path / "out.csv"), "--json"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out.csv").read_text() == batch_csv(rows, ["horizontal", "vertical"])
