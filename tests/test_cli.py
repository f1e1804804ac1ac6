"""`python -m tlcore` end to end, as scripts and benchmarks call it."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, env=None, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "tlcore", *map(str, args)],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def last_json(result):
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def small_zip(horses_or_humans, tmp_path_factory):
    path = tmp_path_factory.mktemp("zips") / "horses-or-humans.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name in ("horses", "humans"):
            # Every fifth image, so every horse and person of the set is represented.
            for image in sorted((horses_or_humans / name).glob("*.png"))[::5]:
                archive.write(image, f"Horse or human/{name}/{image.name}")
    return path


def test_summary_prints_the_classic_lab_counts():
    result = cli("summary", "--backbone", "inception_v3", "--input-size", "150", "--cut", "mixed7",
                 "--pooling", "flatten", "--dense", "1024", "--dropout", "0.2", "--classes", "2",
                 "--weights", "none", "--json")
    summary = last_json(result)
    assert summary["cut_output_shape"] == [7, 7, 768]
    assert (summary["total_params"], summary["trainable_params"], summary["non_trainable_params"]) == (
        47_512_481, 38_537_217, 8_975_264)
    text = cli("summary", "--backbone", "inception_v3", "--cut", "mixed7", "--pooling", "flatten",
               "--dense", "1024", "--classes", "2", "--weights", "none").stdout
    assert "47,512,481" in text and "7 x 7 x 768" in text


def test_layers_lists_every_layer_as_json():
    layers = last_json(cli("layers", "--backbone", "mobilenet_v2", "--alpha", "0.35", "--json"))["layers"]
    names = [row["name"] for row in layers]
    assert names[0] == "input_layer" and names[-1] == "out_relu"
    cuts = [row["name"] for row in layers if row["suggested_cut"]]
    assert cuts[-1] == "out_relu" and "block_13_expand_relu" not in cuts
    assert all(name.startswith("block_") and name.endswith("_add") for name in cuts[:-1])


def test_a_wrong_layer_name_is_a_plain_error_not_a_traceback():
    result = cli("summary", "--backbone", "inception_v3", "--cut", "mixed77", "--classes", "2", "--json", check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert last_json(result)["error"].startswith("Unknown cut layer `mixed77` for InceptionV3")


def test_train_predict_evaluate_and_inspect_a_real_zip(small_zip, keras_home, tmp_path, horses_or_humans):
    env = {"KERAS_HOME": str(keras_home), "TLCORE_HOME": str(tmp_path / "home")}
    trained = last_json(cli("train", small_zip, "--input-size", "96", "--epochs", "2", "--learning-rate", "0.005",
                            "--runs-dir", tmp_path / "runs", "--json", env=env))
    assert trained["status"] == "finished"
    assert trained["classes"] == ["horses", "humans"]
    assert max(trained["history"]["val_accuracy"]) >= 0.8
    assert all(len(trained["history"][k]) == 2 for k in ("loss", "accuracy", "val_loss", "val_accuracy"))
    assert trained["seconds"] > 0
    run_dir = Path(trained["run_dir"])
    assert (run_dir / "model.keras").is_file()

    # Images the model never saw: the zip holds only every fifth one.
    unseen = {name: sorted((horses_or_humans / name).glob("*.png"))[2::30] for name in ("horses", "humans")}
    images = unseen["horses"] + unseen["humans"]
    predicted = last_json(cli("predict", run_dir, *images, "--json", env=env))["predictions"]
    assert [p["image"] for p in predicted] == [str(i) for i in images]
    correct = sum(p["top_class"] == Path(p["image"]).parent.name for p in predicted)
    assert correct >= 8, predicted
    for p in predicted:
        assert list(p["probabilities"]) == ["horses", "humans"]
        assert abs(sum(p["probabilities"].values()) - 1) < 1e-5
        assert p["probabilities"][p["top_class"]] == max(p["probabilities"].values())

    # Evaluating on the same zip rebuilds the run's own validation split.
    evaluated = last_json(cli("evaluate", run_dir, small_zip, "--json", env=env))
    assert evaluated["accuracy"] == pytest.approx(trained["history"]["val_accuracy"][-1], abs=1e-6)
    assert sum(map(sum, evaluated["confusion_matrix"])) == 12

    report = last_json(cli("inspect", small_zip, "--json", env=env))
    assert json.dumps(report).count("horses") >= 1


def test_train_with_no_flags_but_data_uses_working_defaults(tmp_path, horses_or_humans, keras_home):
    data = tmp_path / "data"
    for name in ("horses", "humans"):
        (data / name).mkdir(parents=True)
        for image in sorted((horses_or_humans / name).glob("*.png"))[:12]:
            shutil.copy(image, data / name / image.name)
    env = {"KERAS_HOME": str(keras_home), "TLCORE_HOME": str(tmp_path / "home"), "TLCORE_RUNS": str(tmp_path / "runs")}
    result = cli("train", data, env=env)
    assert "Status: finished" in result.stdout
    config = json.loads(next((tmp_path / "runs").glob("*/config.json")).read_text())
    assert config["model"]["backbone"] == "mobilenet_v2" and config["model"]["cut_layer"] == "out_relu"
    assert "epoch 10" in result.stderr
