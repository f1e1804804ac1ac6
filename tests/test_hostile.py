"""Hostile uploads: each case builds its file here and asserts the plain outcome a user (or the server) gets."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from conftest_data import class_files, encode, real_images, snapshot, write_files
from hostile_files import empty_png, jpeg2000, os2_bmp, png_with_bad_idat_checksum, zip_of

from tlcore import images, runs, storage
from tlcore.dataset import Dataset, load_dataset
from tlcore.errors import DatasetError, ImageError, UnsafeArchiveError
from tlcore.features import FeatureCache
from tlcore.model import ModelConfig
from tlcore.training import TrainConfig, TrainingJob, train

SMALL = ModelConfig(backbone="mobilenet_v2", alpha=0.35, input_size=96, dense_units=(8,))


@pytest.fixture
def photos(horses_or_humans) -> dict[str, list[Path]]:
    return {name: real_images(horses_or_humans / name, 8) for name in ("horses", "humans")}


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "tlcore", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def left_behind(work: Path) -> dict[str, int]:
    """What a refused upload left in the work folder, lock files aside."""
    return {path: size for path, size in snapshot(work).items() if not path.startswith("locks")}


# 1. Files that pass the check but would kill training -------------------------------------------


def test_files_only_pillow_reads_are_converted_and_train(photos, real_weights, tmp_path):
    files = class_files(photos)
    files["horses/bad-checksum.png"] = png_with_bad_idat_checksum(photos["horses"][0])
    files["humans/os2.bmp"] = os2_bmp(photos["humans"][0])
    for name in ("horses/bad-checksum.png", "humans/os2.bmp"):
        assert not images.tensorflow_decodes(files[name]), f"{name} should be one TensorFlow refuses"
    data = load_dataset(write_files(tmp_path / "pets", files), work_dir=tmp_path / "work")
    assert sorted(name for _, name in data.converted) == ["horses/bad-checksum.png", "humans/os2.bmp"]
    assert data.skipped == ()
    for path, _ in data.converted:
        assert images.tensorflow_decodes(path.read_bytes())
    job = train(data, SMALL, TrainConfig(epochs=1), runs_dir=tmp_path / "runs", work_dir=tmp_path / "work")
    assert job.snapshot().status == runs.FINISHED, job.snapshot().message


@pytest.mark.parametrize("augment", [False, True], ids=["features", "end to end"])
def test_an_image_that_fails_during_training_is_left_out_and_named(photos, real_weights, tmp_path, augment):
    data = load_dataset(write_files(tmp_path / "pets", class_files(photos)), work_dir=tmp_path / "work")
    broken = tmp_path / "pets" / "horses" / "changed-since.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    damaged = Dataset(data.root, data.classes, train=data.train + ((broken, 0),), validation=data.validation)
    job = train(damaged, SMALL, TrainConfig(epochs=1, augment=augment), runs_dir=tmp_path / "runs",
                work_dir=tmp_path / "work")
    state = job.snapshot()
    assert state.status == runs.FINISHED, state.message
    assert state.unreadable == ("horses/changed-since.png",)
    assert "could not be read" in state.message and "changed-since.png" in state.message
    assert "Traceback" not in state.message
    assert json.loads((job.run_dir / "status.json").read_text())["unreadable"] == ["horses/changed-since.png"]


# 2. The same zip loaded by several users at once -------------------------------------------------


def test_the_same_zip_loaded_at_once_by_threads_and_processes(photos, flowers, tmp_path):
    files = class_files(photos)
    rose = real_images(flowers / "rose", 3)
    for index, photo in enumerate(rose):  # files that need converting, the work that used to collide
        files[f"horses/rose{index}.tif"] = encode(Image.open(photo).convert("RGB"), "TIFF")
        files[f"humans/rose{index}.jpg"] = encode(Image.open(photo).convert("CMYK"), "JPEG")
    upload = zip_of(tmp_path / "class.zip", files)
    work = tmp_path / "work"
    code = ("import sys, json; sys.path.insert(0, sys.argv[3]); from tlcore.dataset import load_dataset; "
            "d = load_dataset(sys.argv[1], work_dir=sys.argv[2]); print(json.dumps(sorted(i.name for i in d.train)))")
    processes = [subprocess.Popen([sys.executable, "-c", code, str(upload), str(work), str(ROOT)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results, errors = [], []

    def load():
        try:
            results.append(sorted(item.name for item in load_dataset(upload, work_dir=work).train))
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-1500:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert not errors, errors
    assert len(results) == 6 and all(result == results[0] for result in results)
    assert len([p for p in (work / "datasets").iterdir() if not p.name.startswith(".")]) == 1


# 3. Tiny uploads that would cost huge memory and time ---------------------------------------------


def test_an_image_with_too_many_pixels_is_refused_before_it_is_decoded(tmp_path):
    huge = tmp_path / "huge.png"
    huge.write_bytes(empty_png(9_400, 9_400, bit_depth=16))  # 88 M pixels in about 200 KB
    assert huge.stat().st_size < 500_000
    assert images.check_image(huge).problem == images.TOO_LARGE
    with pytest.raises(ImageError, match="too many pixels"):
        images.load_rgb(huge.read_bytes())


def test_the_pixel_limit_is_settable_and_protects_prediction(tmp_path, monkeypatch):
    picture = tmp_path / "picture.png"
    picture.write_bytes(empty_png(1200, 1000, bit_depth=8, colour_type=2))
    assert images.check_image(picture).problem is None
    monkeypatch.setenv("TLCORE_MAX_IMAGE_PIXELS", "1000000")
    assert images.check_image(picture).problem == images.TOO_LARGE
    import keras

    from tlcore.predict import Predictor

    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(inputs)))
    with pytest.raises(ImageError, match="too many pixels"):
        Predictor(model, ["a", "b"], 8).predict([picture.read_bytes()])


def test_a_zip_of_huge_images_skips_them_and_keeps_the_rest(photos, tmp_path):
    files = class_files(photos)
    for index in range(4):
        files[f"horses/huge{index}.png"] = empty_png(9_400, 9_400, bit_depth=16)
    data = load_dataset(zip_of(tmp_path / "huge.zip", files), work_dir=tmp_path / "work")
    assert {s.path: s.reason for s in data.skipped} == {f"horses/huge{i}.png": images.TOO_LARGE for i in range(4)}
    assert len(data.train) + len(data.validation) == 16


def test_formats_outside_the_list_are_refused_unopened(photos, tmp_path):
    disguised = tmp_path / "photo.png"
    disguised.write_bytes(jpeg2000(photos["horses"][0]))
    assert images.check_image(disguised).problem == images.NOT_AN_IMAGE
    with pytest.raises(ImageError, match="not an image"):
        images.load_rgb(disguised)


def test_a_dataset_over_its_pixel_budget_is_refused_plainly(photos, tmp_path, monkeypatch):
    monkeypatch.setenv("TLCORE_MAX_DATASET_PIXELS", str(10 * 300 * 300))
    upload = zip_of(tmp_path / "many.zip", class_files(photos))
    with pytest.raises(DatasetError, match="million pixels"):
        load_dataset(upload, work_dir=tmp_path / "work")
    assert not list((tmp_path / "work" / "datasets").iterdir())


# 4. The disk must not fill up ---------------------------------------------------------------------


def test_many_small_files_of_zeros_are_refused_as_a_whole(tmp_path):
    zeros = b"\0" * (1024 * 1024 - 1)  # just under the size from which each file's own ratio counts
    upload = zip_of(tmp_path / "zeros.zip", {f"cats/{i}.png": zeros for i in range(80)})
    assert upload.stat().st_size < 2_000_000
    with pytest.raises(UnsafeArchiveError, match="zip bomb"):
        load_dataset(upload, work_dir=tmp_path / "work")
    assert set(left_behind(tmp_path / "work")) <= {"datasets"}, "nothing was unpacked"


def test_the_same_zip_three_times_is_stored_once_and_a_refused_one_not_at_all(photos, tmp_path):
    work = tmp_path / "work"
    upload = zip_of(tmp_path / "pets.zip", class_files(photos))
    for _ in range(3):
        load_dataset(upload, work_dir=work)
    assert len(list((work / "datasets").iterdir())) == 1
    one_class = zip_of(tmp_path / "one.zip", class_files({"horses": photos["horses"]}))
    with pytest.raises(DatasetError, match="only one class"):
        load_dataset(one_class, work_dir=work)
    assert len(list((work / "datasets").iterdir())) == 1, "the refused zip's folder is gone"


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(item, (then, then))


def test_the_work_folder_keeps_to_its_budget_sparing_what_live_trainings_read(tmp_path):
    work = tmp_path / "work"
    for name, days in (("old", 3), ("older", 4), ("in-use", 5)):
        folder = work / "datasets" / name
        folder.mkdir(parents=True)
        (folder / "a.bin").write_bytes(b"x" * 100_000)
        age(folder, days * 86400)
    copy = work / "converted" / "ab" / "copy.png"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(b"y" * 100_000)
    age(copy, 2 * 86400)
    fresh = work / "datasets" / "just-loaded"
    fresh.mkdir()
    (fresh / "a.bin").write_bytes(b"z" * 100_000)
    removed = storage.enforce_budget(work, budget=350_000, keep={work / "datasets" / "in-use"})
    assert sorted(path.name for path in removed) == ["old", "older"]
    assert (work / "datasets" / "in-use").exists() and fresh.exists() and copy.exists()
    assert storage.usage(work)["total"] <= 350_000


def test_leftovers_of_a_killed_training_are_removed_at_start(tmp_path):
    work = tmp_path / "work"
    store = FeatureCache(work / "features").store("key")
    writer = store.writer(["a"], {"avg": (4,)})  # killed mid-extraction: never committed nor aborted
    partial = work / "datasets" / ".abc.x.partial"
    partial.mkdir(parents=True)
    for path in [*store.folder.iterdir(), partial]:
        age(path, 7200)
    assert storage.remove_leftovers(work) == 2
    assert not list(store.folder.glob(".*")) and not partial.exists()
    del writer


# 5. Odd zips get a plain refusal and leave nothing ------------------------------------------------


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"/".join(["deep"] * 1000) + "/cats/1.png": b"x", "dogs/1.png": b"y"}, "folders deep"),
        ({"cats": b"a file", "cats/1.png": b"x"}, "both a file and a folder"),
        ({"c" * 300 + "/1.png": b"x", "dogs/1.png": b"y"}, "too long"),
        ({"cats/" + "n" * 300 + ".png": b"x", "dogs/1.png": b"y"}, "too long"),
    ],
    ids=["1000 folders deep", "file and folder", "long folder name", "long file name"],
)
def test_odd_zips_are_refused_plainly_and_leave_nothing(tmp_path, files, message):
    upload = zip_of(tmp_path / "odd.zip", files)
    work = tmp_path / "work"
    with pytest.raises(UnsafeArchiveError, match=message):
        load_dataset(upload, work_dir=work)
    assert set(left_behind(work)) <= {"datasets"}, "nothing was unpacked"


# 7. Names: terminal control characters, look-alike spellings ---------------------------------------


def test_control_characters_in_names_are_escaped_in_the_terminal(photos, tmp_path):
    folder = write_files(tmp_path / "pets", class_files({"\x1b[31mred\x1b[0m": photos["horses"], "humans": photos["humans"]}))
    result = cli("inspect", folder)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\\x1b[31mred" in result.stdout


def test_one_name_typed_two_ways_is_one_class_and_case_differences_are_flagged(photos, tmp_path):
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    files = class_files({nfc: photos["horses"][:4], nfd: photos["horses"][4:], "Cat": photos["humans"][:4],
                         "cat": photos["humans"][4:]})
    data = load_dataset(write_files(tmp_path / "names", files), work_dir=tmp_path / "work")
    assert data.classes == ("Cat", "caf\u00e9", "cat")
    assert data.counts()["train"]["caf\u00e9"] + data.counts()["validation"]["caf\u00e9"] == 8
    assert any("differ only in capital letters" in warning for warning in data.warnings)


# 9. A finished job lets go of its model ------------------------------------------------------------


def test_a_finished_job_keeps_its_state_only(photos, real_weights, tmp_path):
    import keras

    data = load_dataset(write_files(tmp_path / "pets", class_files(photos)), work_dir=tmp_path / "work")
    seen = []

    class Grab(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            seen.append(weakref.ref(self.model))

    job = TrainingJob(data, SMALL, TrainConfig(epochs=1), runs_dir=tmp_path / "runs", work_dir=tmp_path / "work",
                      callbacks=[Grab()])
    job.run()
    assert job.snapshot().status == runs.FINISHED
    gc.collect()
    assert seen and seen[0]() is None, "the trained head is still held after the job ended"
    assert not hasattr(job, "_events")


# 10. The command line's rough edges ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, horses_or_humans, keras_home):
    root = tmp_path_factory.mktemp("tiny-run")
    folder = write_files(root / "pets", class_files({n: real_images(horses_or_humans / n, 6) for n in ("horses", "humans")}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERAS_HOME", str(keras_home))
        job = train(folder, SMALL, TrainConfig(epochs=1), runs_dir=root / "runs", work_dir=root / "work")
    return job.run_dir


def test_predict_names_a_missing_file_or_a_folder_plainly(tiny_run, tmp_path):
    missing = cli("predict", tiny_run, tmp_path / "missing.png")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "`missing.png` does not exist" in missing.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    alone = cli("predict", tiny_run, empty)  # one folder: every picture in it, and there are none
    assert alone.returncode == 2 and "holds no pictures" in alone.stderr and "Traceback" not in alone.stderr
    picture = next((tiny_run.parent.parent / "pets" / "horses").iterdir())
    mixed = cli("predict", tiny_run, picture, empty)
    assert mixed.returncode == 2 and "is a folder, not an image" in mixed.stderr and "damaged" not in mixed.stderr


def test_train_on_a_refused_or_missing_dataset_makes_no_run(tmp_path, photos):
    one_class = write_files(tmp_path / "one", class_files({"horses": photos["horses"]}))
    for data in (one_class, tmp_path / "nowhere.zip"):
        result = cli("train", data, "--runs-dir", tmp_path / "runs", "--json", env={"TLCORE_HOME": str(tmp_path / "home")})
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "error" in json.loads(result.stdout.strip().splitlines()[-1])
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_no_float64_copy_of_a_16_bit_image_and_the_same_levels(tmp_path):
    values = np.array([[0, 128, 129, 385, 65535, 32896]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    rgb = images.load_array(image)
    np.testing.assert_array_equal(rgb[..., 0], np.rint(values / 257.0).astype(np.uint8))
