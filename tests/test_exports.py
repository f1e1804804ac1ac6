"""Models that leave the app: every export format loads without Transfer Lab and answers as the app does.

One real run (horse-or-human, real MobileNetV2 weights) is exported once; each format is then
loaded in a fresh process that cannot import `tlcore`, and `predict.py` runs in a fresh virtual
environment holding only numpy, Pillow and the light runtimes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

from conftest import MOBILENET_WEIGHTS, ROOT
from conftest_data import class_files, real_images, write_files

from tlcore.exports import FORMATS, export_run
from tlcore.exports.formats import ExportError, ExportFormat
from tlcore.model import ModelConfig
from tlcore.predict import get_predictor
from tlcore.training import TrainConfig, train

SIZE = 96
CLEAN_ENV = {"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "2", "HOME": os.environ.get("HOME", "/root")}
RUNTIMES = ["numpy", "pillow", "ai-edge-litert", "onnxruntime"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory, horses_or_humans, keras_home):
    """A run trained on 40 horses and 40 humans, and a few pictures it never saw."""
    root = tmp_path_factory.mktemp("export-run")
    photos = {name: real_images(horses_or_humans / name, 50) for name in ("horses", "humans")}
    folder = write_files(root / "data", class_files({name: paths[:40] for name, paths in photos.items()}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERAS_HOME", str(keras_home))
        job = train(folder, ModelConfig(input_size=SIZE, dense_units=(32,)), TrainConfig(epochs=3), runs_dir=root / "runs",
                    work_dir=root / "work")
    assert job.snapshot().status == "finished", job.snapshot().message
    unseen = [path for paths in photos.values() for path in paths[40:]]
    return job.run_dir, unseen


@pytest.fixture(scope="session")
def bundle(trained, tmp_path_factory):
    run_dir, _ = trained
    out = tmp_path_factory.mktemp("bundle") / "export"
    report = export_run(run_dir, out, list(FORMATS))
    return out, report


@pytest.fixture(scope="session")
def app_probabilities(trained):
    run_dir, unseen = trained
    predictor = get_predictor(run_dir)
    return {str(path): [p.probabilities[name] for name in predictor.labels] for path, p in
            zip(unseen, predictor.predict(unseen))}


@pytest.fixture(scope="session")
def light_venv(tmp_path_factory) -> Path:
    """A fresh virtual environment with numpy, Pillow and the LiteRT and ONNX runtimes, and no Transfer Lab."""
    folder = tmp_path_factory.mktemp("light-venv") / "venv"
    venv.create(folder, with_pip=True)
    python = folder / "bin" / "python"
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *RUNTIMES], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return python


def run_predict(python: Path, out: Path, images, fmt: str) -> dict[str, list[float]]:
    done = subprocess.run([str(python), "predict.py", "--format", fmt, *map(str, images), "--json"], cwd=out,
                          capture_output=True, text=True, timeout=600, env=CLEAN_ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    return {row["image"]: list(row["probabilities"].values()) for row in rows}


def test_the_bundle_holds_every_format_and_says_how_to_use_it(bundle, trained):
    out, report = bundle
    assert set(report["formats"]) == set(FORMATS)
    for name, fmt in FORMATS.items():
        assert (out / fmt.file).exists() and report["formats"][name]["bytes"] > 10_000, name
    assert (out / "labels.txt").read_text().splitlines() == ["horses", "humans"]
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["classes"] == ["horses", "humans"] and metadata["input_size"] == SIZE
    assert metadata["output"] == "sigmoid" and "humans" in metadata["output_meaning"]
    assert metadata["backbone"]["cut_layer"] == "out_relu" and metadata["training"]["epochs"] == 3
    assert metadata["validation_accuracy"] == pytest.approx(json.loads((trained[0] / "history.json").read_text())
                                                           ["val_accuracy"][-1])
    assert set(metadata["files"]) == set(FORMATS)
    readme = (out / "README.md").read_text()
    assert "predict.py" in readme and all(fmt.file in readme for fmt in FORMATS.values())
    assert "tlcore" not in (out / "predict.py").read_text().split('"""', 2)[2]


def test_the_saved_model_holds_only_built_in_keras_layers(bundle):
    import zipfile

    out, _ = bundle
    with zipfile.ZipFile(out / "model.keras") as archive:
        config = archive.read("config.json").decode()
    assert "tlcore" not in config and "BackbonePreprocess" not in config


def test_no_transfer_lab_where_the_bundle_runs(bundle):
    out, _ = bundle
    done = subprocess.run([sys.executable, "-c", "import tlcore"], cwd=out, capture_output=True, text=True,
                          env=CLEAN_ENV, timeout=60)
    assert done.returncode != 0 and "No module named 'tlcore'" in done.stderr


@pytest.mark.parametrize(("fmt", "tolerance"), [("keras", 1e-5), ("savedmodel", 1e-5), ("onnx", 1e-5), ("tflite", 1e-4)])
def test_each_format_answers_as_the_app_does_in_a_process_without_tlcore(bundle, trained, app_probabilities, fmt, tolerance):
    out, _ = bundle
    _, unseen = trained
    got = run_predict(Path(sys.executable), out, unseen, fmt)
    for image, expected in app_probabilities.items():
        np.testing.assert_allclose(got[image], expected, atol=tolerance, err_msg=f"{fmt}: {image}")


def test_the_quantised_model_agrees_with_the_float_one(bundle, trained, app_probabilities):
    out, report = bundle
    agreement = report["formats"]["tflite-int8"]["top1_agreement"]
    assert agreement >= 0.97, agreement
    float_size, int8_size = report["formats"]["tflite"]["bytes"], report["formats"]["tflite-int8"]["bytes"]
    assert int8_size < float_size / 2
    got = run_predict(Path(sys.executable), out, trained[1], "tflite-int8")
    same = np.mean([np.argmax(got[image]) == np.argmax(expected) for image, expected in app_probabilities.items()])
    assert same >= 0.9


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["tflite", "onnx", "tflite-int8"])
def test_predict_py_runs_in_a_fresh_virtual_environment(bundle, trained, app_probabilities, light_venv, fmt):
    out, _ = bundle
    done = subprocess.run([str(light_venv), "-c", "import tensorflow"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0, "the light environment must not hold TensorFlow"
    got = run_predict(light_venv, out, trained[1], fmt)
    cli = subprocess.run([sys.executable, "-m", "tlcore", "predict", str(trained[0]), *map(str, trained[1]), "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr[-2000:]
    expected = {row["image"]: list(row["probabilities"].values())
                for row in json.loads(cli.stdout.strip().splitlines()[-1])["predictions"]}
    for image in expected:
        if fmt == "tflite-int8":
            assert np.argmax(got[image]) == np.argmax(expected[image]) or abs(expected[image][0] - 0.5) < 0.1
        else:
            np.testing.assert_allclose(got[image], expected[image], atol=1e-4, err_msg=f"{fmt}: {image}")


def test_a_format_whose_package_is_missing_says_what_to_install():
    fmt = ExportFormat("x", "x.bin", "Imaginary", {"no_such_module_at_all": "imaginary-runtime"}, "", lambda c, p: {})
    with pytest.raises(ExportError, match="pip install imaginary-runtime"):
        fmt.check_available()


def test_an_unknown_format_is_a_plain_error(trained, tmp_path):
    with pytest.raises(ExportError, match="Unknown export format `zip`"):
        export_run(trained[0], tmp_path / "out", ["zip"])


def test_the_command_line_exports_and_reports(trained, tmp_path):
    done = subprocess.run([sys.executable, "-m", "tlcore", "export", str(trained[0]), "--out", str(tmp_path / "cli"),
                           "--format", "keras", "--format", "tflite", "--json"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(report["formats"]) == {"keras", "tflite"}
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == [
        "README.md", "labels.txt", "metadata.json", "model.keras", "model.tflite", "predict.py"]


def test_runs_saved_with_the_old_preprocessing_layer_still_load(tmp_path):
    import keras

    from tlcore.model import BackbonePreprocess
    from tlcore.predict import Predictor

    inputs = keras.Input((None, None, 3))
    x = keras.layers.Resizing(8, 8, name="resize")(inputs)
    x = BackbonePreprocess("mobilenet_v2", name="preprocess")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    run = tmp_path / "old-run"
    run.mkdir()
    model.save(run / "model.keras")
    (run / "labels.json").write_text('["a", "b"]')
    (run / "config.json").write_text('{"model": {"input_size": 8}}')
    image = np.random.default_rng(0).integers(0, 255, (20, 30, 3)).astype("uint8")
    expected = float(model(image[None].astype("float32"))[0, 0])
    from PIL import Image

    picture = Image.fromarray(image)
    assert Predictor.from_run(run).predict([picture])[0].probabilities["b"] == pytest.approx(expected, abs=1e-6)


# The code export -----------------------------------------------------------------------------


@pytest.mark.slow
def test_the_code_export_trains_the_same_model_again(flowers, tmp_path, keras_home):
    from tlcore.exports.script import training_script

    home = tmp_path / "keras"
    (home / "models").mkdir(parents=True)
    # Keras asks for the file of its input size; the convolution weights are the same for every size.
    shutil.copy(keras_home / "models" / MOBILENET_WEIGHTS,
                home / "models" / MOBILENET_WEIGHTS.replace("_224_", f"_{SIZE}_"))
    shutil.copy(keras_home / "models" / MOBILENET_WEIGHTS, home / "models" / MOBILENET_WEIGHTS)
    # The whole flowers set: about 700 validation images, so one image is a seventh of a point; Keras
    # splits the images its own way, and the run's validation images are not the script's.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERAS_HOME", str(home))
        job = train(flowers, ModelConfig(input_size=SIZE, dense_units=(32,)), TrainConfig(epochs=3),
                    runs_dir=tmp_path / "runs", work_dir=tmp_path / "work")
    run_accuracy = job.snapshot().final["val_accuracy"]
    script = tmp_path / "train_again.py"
    script.write_text(training_script(job.run_dir))
    compile(script.read_text(), str(script), "exec")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**CLEAN_ENV, "KERAS_HOME": str(home)})
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("val_accuracy: ")
    assert abs(float(last.split()[-1]) - run_accuracy) <= 0.03, (last, run_accuracy)
    assert (tmp_path / "train_again.keras").is_file()


def test_the_code_export_follows_the_datasets_folders(trained, tmp_path):
    from tlcore.exports.script import training_script
    from tlcore.runs import Run

    copy = tmp_path / trained[0].name
    shutil.copytree(trained[0], copy)
    run = Run(copy)
    run.update_data(root="/data/My Pets", folders={"train": "My Pets/train", "validation": "My Pets/val"})
    script = training_script(copy)
    compile(script, "train_again.py", "exec")
    assert "DATA / 'My Pets/train'" in script and "DATA / 'My Pets/val'" in script
    assert "validation_split" not in script.split("image_dataset_from_directory", 1)[1].split("\n")[0]
    assert 'get_layer("out_relu")' in script and "Rescaling(1 / 127.5, offset=-1)" in script
    assert "keras.optimizers.Adam(learning_rate=0.001)" in script and "EPOCHS = 3" in script


@pytest.mark.slow
def test_pip_install_gives_both_commands_anywhere(tmp_path):
    folder = tmp_path / "venv"
    venv.create(folder, with_pip=True)
    python = folder / "bin" / "python"
    # The lean CPU-only TensorFlow of requirements.txt first (already in pip's cache, where the
    # package's own `tensorflow` would be a second 600 MB download), then the package itself.
    for arguments in (["-r", str(ROOT / "requirements.txt")], ["--no-deps", str(ROOT)]):
        done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *arguments], capture_output=True,
                              text=True, timeout=1800)
        assert done.returncode == 0, done.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for command in (["tlcore", "--help"], ["transfer-lab", "--help"]):
        result = subprocess.run([str(folder / "bin" / command[0]), *command[1:]], cwd=elsewhere, capture_output=True,
                                text=True, timeout=300, env=CLEAN_ENV)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "usage:" in result.stdout
    summary = subprocess.run([str(folder / "bin" / "tlcore"), "summary", "--backbone", "inception_v3", "--cut", "mixed7",
                              "--pooling", "flatten", "--dense", "1024", "--classes", "2", "--weights", "none",
                              "--input-size", "150", "--json"], cwd=elsewhere, capture_output=True, text=True,
                             timeout=600, env=CLEAN_ENV)
    assert summary.returncode == 0, summary.stderr[-2000:]
    assert json.loads(summary.stdout.strip().splitlines()[-1])["total_params"] == 47_512_481
    files = subprocess.run([str(python), "-c", "import transfer_lab_app, pathlib; "
                            "print(sorted(p.name for p in pathlib.Path(transfer_lab_app.__path__[0]).rglob('*.py')))"],
                           cwd=elsewhere, capture_output=True, text=True, timeout=120, env=CLEAN_ENV)
    assert files.returncode == 0, files.stderr
    assert "app.py" in files.stdout and "train.py" in files.stdout


def test_a_quantised_model_that_often_disagrees_is_flagged_in_plain_words():
    from tlcore.exports.formats import agreement_note

    assert agreement_note({"formats": {"tflite-int8": {"top1_agreement": 0.98}}}) is None
    assert agreement_note({"formats": {"tflite": {}}}) is None
    note = agreement_note({"formats": {"tflite-int8": {"top1_agreement": 0.805}}})
    assert "only 80%" in note and "model.tflite" in note
