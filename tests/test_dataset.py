"""Tests of `tlcore.dataset`: layouts, junk, bad and unusual images, conversions, zips and plain errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest_data import (
    assert_same_pixels,
    class_files,
    file_hashes,
    make_zip,
    real_images,
    snapshot,
    unusual_encodings,
    write_files,
)
from tlcore import dataset as datasets
from tlcore.dataset import Skipped, load_dataset, load_folder
from tlcore.errors import DatasetError, UnsafeArchiveError
from tlcore.images import load_array


@pytest.fixture
def pets(horses_or_humans) -> dict[str, list[Path]]:
    """Six real renders per class: enough for a split, small enough to stay fast."""
    return {name: real_images(horses_or_humans / name, 6) for name in ("horses", "humans")}


@pytest.fixture
def work(tmp_path) -> Path:
    return tmp_path / "work"


def test_class_folders(tmp_path, work, pets):
    folder = write_files(tmp_path / "pets", class_files(pets))
    before = file_hashes(folder)
    data = load_dataset(folder, work_dir=work)
    assert data.classes == ("horses", "humans") and data.root == folder
    assert data.counts() == {"train": {"horses": 5, "humans": 5}, "validation": {"horses": 1, "humans": 1}}
    assert not data.presplit and data.skipped == () and data.warnings == () and data.test == ()
    assert all(isinstance(item.path, Path) and isinstance(item.label, int) for item in data.train + data.validation)
    assert all(len(item.digest) == 64 and item.path == folder / item.name for item in data.train + data.validation)
    assert file_hashes(folder) == before and not work.exists()


def test_split_is_stratified_and_repeatable(tmp_path, work, pets):
    folder = write_files(tmp_path / "pets", class_files(pets))
    first = load_dataset(folder, work_dir=work, seed=1, val_split=0.5)
    assert first == load_dataset(folder, work_dir=work, seed=1, val_split=0.5)
    assert first.counts()["validation"] == {"horses": 3, "humans": 3}
    other_seeds = [load_dataset(folder, work_dir=work, seed=seed, val_split=0.5).validation for seed in range(2, 6)]
    assert any(validation != first.validation for validation in other_seeds)
    assert not set(first.train) & set(first.validation)


def test_load_folder_still_works(tmp_path, pets):
    folder = write_files(tmp_path / "pets", class_files(pets))
    assert load_folder(folder).classes == ("horses", "humans")


def test_zip_is_unpacked_once_and_reused(tmp_path, work, pets, monkeypatch):
    upload = make_zip(tmp_path / "pets.zip", class_files(pets))
    unpacked = []
    real_extract = datasets.extract_zip
    monkeypatch.setattr(datasets, "extract_zip", lambda *args: unpacked.append(args) or real_extract(*args))
    first = load_dataset(upload, work_dir=work)
    second = load_dataset(upload, work_dir=work)
    assert len(unpacked) == 1 and first == second
    assert first.root.parent == work / "datasets" and re.fullmatch("[0-9a-f]{16}", first.root.name)
    assert all(item.path.is_relative_to(first.root) for item in first.train)


def test_wrapper_folder_in_a_zip(tmp_path, work, pets):
    upload = make_zip(tmp_path / "pets.zip", class_files(pets, prefix="My Pets/"))
    data = load_dataset(upload, work_dir=work)
    assert data.classes == ("horses", "humans") and len(data.train) == 10


def test_two_wrapper_folders(tmp_path, work, pets):
    folder = write_files(tmp_path / "upload", class_files(pets, prefix="pets/pets/"))
    assert load_dataset(folder, work_dir=work).classes == ("horses", "humans")


def test_macos_and_windows_junk_is_skipped_and_reported(tmp_path, work, pets):
    image = pets["horses"][0].read_bytes()
    junk = {
        "__MACOSX/My Pets/horses/._horse.png": b"\x00\x05\x16\x07",
        "My Pets/.DS_Store": b"\x00\x00\x00\x01Bud1",
        "My Pets/horses/._horse.png": b"\x00\x05\x16\x07",
        "My Pets/horses/Thumbs.db": b"\xd0\xcf\x11\xe0",
        "My Pets/humans/desktop.ini": b"[.ShellClassInfo]",
        "My Pets/humans/.hidden.png": image,
        "My Pets/humans/notes.txt": b"to do",
    }
    upload = make_zip(tmp_path / "pets.zip", {**class_files(pets, prefix="My Pets/"), **junk})
    data = load_dataset(upload, work_dir=work)
    assert data.classes == ("horses", "humans") and len(data.train) + len(data.validation) == 12
    assert data.skipped == (
        Skipped("My Pets/.DS_Store", "macOS folder settings"),
        Skipped("My Pets/horses/._horse.png", "macOS metadata file"),
        Skipped("My Pets/horses/Thumbs.db", "Windows thumbnail cache"),
        Skipped("My Pets/humans/.hidden.png", "hidden file"),
        Skipped("My Pets/humans/desktop.ini", "Windows folder settings"),
        Skipped("My Pets/humans/notes.txt", "not an image file"),
        Skipped("__MACOSX", "macOS metadata folder"),
    )


def test_presplit_with_a_class_missing_from_validation(tmp_path, work, pets):
    files = {
        **class_files({name: paths[:4] for name, paths in pets.items()}, prefix="train/"),
        **class_files({"horses": pets["horses"][4:]}, prefix="validation/"),
        **class_files({"humans": pets["humans"][4:]}, prefix="test/"),
    }
    data = load_dataset(write_files(tmp_path / "pets", files), work_dir=work)
    assert data.presplit and data.classes == ("horses", "humans")
    assert data.counts() == {
        "train": {"horses": 4, "humans": 4},
        "validation": {"horses": 2, "humans": 0},
        "test": {"horses": 0, "humans": 2},
    }
    assert any("`humans` has no validation images" in warning for warning in data.warnings)
    assert any("`horses` has no test images" in warning for warning in data.warnings)


@pytest.mark.parametrize("train, validation, test", [("Train", "VAL", "Test"), ("train", "valid", "TEST"), ("TRAIN", "Validation", None)])
def test_split_names_are_recognised_in_any_case(tmp_path, work, pets, train, validation, test):
    files = {
        **class_files({name: paths[:3] for name, paths in pets.items()}, prefix=f"{train}/"),
        **class_files({name: paths[3:5] for name, paths in pets.items()}, prefix=f"{validation}/"),
    }
    if test:
        files.update(class_files({name: paths[5:] for name, paths in pets.items()}, prefix=f"{test}/"))
    data = load_dataset(write_files(tmp_path / "pets", files), work_dir=work)
    assert data.presplit and data.warnings == ()
    assert (len(data.train), len(data.validation), len(data.test)) == (6, 4, 2 if test else 0)


def test_train_folder_without_validation_is_split(tmp_path, work, pets):
    files = class_files(pets, prefix="train/")
    data = load_dataset(write_files(tmp_path / "pets", files), work_dir=work)
    assert not data.presplit and data.counts()["validation"] == {"horses": 1, "humans": 1}
    assert any("no validation folder" in warning for warning in data.warnings)


def test_class_only_in_validation_is_an_error(tmp_path, work, pets):
    files = {
        **class_files({"horses": pets["horses"][:4], "humans": pets["humans"][:4]}, prefix="train/"),
        **class_files({"horses": pets["horses"][4:], "zebras": pets["humans"][4:]}, prefix="validation/"),
    }
    with pytest.raises(DatasetError, match="`zebras` has images in `validation` but none for training"):
        load_dataset(write_files(tmp_path / "pets", files), work_dir=work)


def test_validation_without_train_is_an_error(tmp_path, work, pets):
    files = {**class_files(pets, prefix="val/"), **class_files(pets, prefix="test/")}
    with pytest.raises(DatasetError, match="`val` folder but no `train` folder"):
        load_dataset(write_files(tmp_path / "pets", files), work_dir=work)


def test_unreadable_images_are_skipped_with_the_reason(tmp_path, work, pets, flowers):
    render = pets["horses"][0].read_bytes()
    photo = real_images(flowers / "daisy", 1)[0].read_bytes()
    damaged = bytearray(photo)
    for index in range(600, len(damaged) - 10, 7):
        damaged[index] = 0xFF if index % 2 else 0x00
    bad = {
        "horses/cut.png": render[: len(render) // 2],
        "horses/damaged.jpg": bytes(damaged),
        "humans/letter.jpg": b"Dear class, please bring your permission slips.",
    }
    data = load_dataset(write_files(tmp_path / "pets", {**class_files(pets), **bad}), work_dir=work)
    assert data.skipped == (
        Skipped("horses/cut.png", "corrupt or truncated"),
        Skipped("horses/damaged.jpg", "corrupt or truncated"),
        Skipped("humans/letter.jpg", "not an image"),
    )
    assert len(data.train) + len(data.validation) == 12


def test_images_beside_class_folders_and_in_subfolders(tmp_path, work, pets):
    files = {
        **class_files({"horses": pets["horses"]}),
        **class_files({"humans/indoor": pets["humans"][:3], "humans/outdoor": pets["humans"][3:]}),
        "stray.png": pets["horses"][0].read_bytes(),
    }
    data = load_dataset(write_files(tmp_path / "pets", files), work_dir=work)
    assert data.counts()["train"] == {"horses": 5, "humans": 5}
    assert data.skipped == (Skipped("stray.png", "not inside a class folder"),)


def _unusual_dataset(pets, flowers) -> dict[str, bytes]:
    photo = real_images(flowers / "daisy", 1)[0]
    unusual = {f"horses/{name}": data for name, data in unusual_encodings(photo, pets["humans"][0]).items()}
    return {**class_files(pets), **unusual}


def _assert_tensorflow_agrees(data, originals: Path) -> None:
    """Every path decodes in TensorFlow to the pixels Pillow reads from the file the user gave."""
    for item in data.train + data.validation + data.test:
        assert data.display_path(item.path) == item.name
        assert_same_pixels(item.path, load_array(originals / item.name))


def test_unusual_images_in_a_folder_are_converted_elsewhere(tmp_path, work, pets, flowers):
    files = _unusual_dataset(pets, flowers)
    folder = write_files(tmp_path / "pets", files)
    before = file_hashes(folder)
    data = load_dataset(folder, work_dir=work)
    assert file_hashes(folder) == before
    converted = dict(data.converted)
    assert sorted(converted.values()) == [
        "horses/cmyk.jpg", "horses/grey16.png", "horses/lossless.webp", "horses/photo.tif", "horses/rotated.jpg"
    ]
    assert all(path.is_relative_to(work / "converted") and path.suffix == ".png" for path in converted)
    assert len(data.train) + len(data.validation) == 19
    _assert_tensorflow_agrees(data, folder)
    # Converted copies are kept, so loading again converts nothing new.
    assert load_dataset(folder, work_dir=work).train == data.train


def test_unusual_images_in_a_zip_are_converted_beside_it_once(tmp_path, work, pets, flowers):
    files = _unusual_dataset(pets, flowers)
    upload = make_zip(tmp_path / "pets.zip", files)
    data = load_dataset(upload, work_dir=work)
    unpacked = file_hashes(data.root)
    assert sorted(name for _, name in data.converted) == [
        "horses/cmyk.jpg", "horses/grey16.png", "horses/lossless.webp", "horses/photo.tif", "horses/rotated.jpg"
    ]
    assert all(path.is_relative_to(work / "converted") for path, _ in data.converted)
    originals = write_files(tmp_path / "originals", files)
    for path, original in data.converted:
        assert_same_pixels(path, load_array(originals / original))
    # The unpacked folder is never written to, and the same pictures share their copies.
    again = load_dataset(upload, work_dir=work)
    assert file_hashes(data.root) == unpacked and again.train == data.train
    copies = sorted((work / "converted").rglob("*.png"))
    elsewhere = load_dataset(write_files(tmp_path / "same-pictures", files), work_dir=work)
    assert sorted(path for path, _ in elsewhere.converted) == sorted(path for path, _ in data.converted)
    assert sorted((work / "converted").rglob("*.png")) == copies


def test_progress_reports_each_stage(tmp_path, work, pets, flowers):
    files = _unusual_dataset(pets, flowers)
    stages = []
    load_dataset(make_zip(tmp_path / "pets.zip", files), work_dir=work, progress=lambda *event: stages.append(event))
    assert {stage for stage, _, _ in stages} == {"unpacking", "checking", "converting"}
    assert ("checking", 19, 19) in stages and ("converting", 5, 5) in stages


def test_rejected_zip_leaves_the_work_folder_untouched(tmp_path, work, pets):
    upload = make_zip(tmp_path / "pets.zip", {**class_files(pets), "../../evil.png": b"x"})
    work.mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(UnsafeArchiveError):
        load_dataset(upload, work_dir=work)
    after = {path: size for path, size in snapshot(tmp_path).items() if not path.startswith("work/locks")}
    assert after == before


def test_the_whole_flowers_set(work, flowers):
    data = load_dataset(flowers, work_dir=work)
    expected = {name: len(list((flowers / name).glob("*.jpg"))) for name in data.classes}
    assert data.classes == ("daisy", "dandelion", "rose", "sunflower", "tulip")
    totals = {name: data.counts()["train"][name] + data.counts()["validation"][name] for name in data.classes}
    assert totals == expected and sum(totals.values()) == 3483
    assert {item.path for item in data.skipped} == {"ATTRIBUTION.txt", "SHA256SUMS"}
    assert data.converted == ()


# Each error must say what is wrong and show what a good dataset looks like.
GOOD_LAYOUT_HINT = "one folder per class"


def _error(source: Path, work: Path) -> str:
    with pytest.raises(DatasetError) as caught:
        load_dataset(source, work_dir=work)
    return str(caught.value)


def test_not_a_zip(tmp_path, work):
    fake = tmp_path / "holiday.zip"
    fake.write_text("not a zip at all")
    message = _error(fake, work)
    assert message.startswith("This file is not a zip archive") and GOOD_LAYOUT_HINT in message


def test_empty_zip(tmp_path, work):
    message = _error(make_zip(tmp_path / "empty.zip", {}), work)
    assert "`empty.zip` is empty" in message and GOOD_LAYOUT_HINT in message


def test_empty_folder(tmp_path, work):
    (tmp_path / "nothing").mkdir()
    assert "is empty" in _error(tmp_path / "nothing", work)


def test_no_images(tmp_path, work):
    folder = write_files(tmp_path / "docs", {"cats/readme.txt": b"hi", "dogs/list.csv": b"a,b"})
    message = _error(folder, work)
    assert "holds no images" in message and GOOD_LAYOUT_HINT in message


def test_single_class(tmp_path, work, pets):
    message = _error(make_zip(tmp_path / "one.zip", class_files({"horses": pets["horses"]})), work)
    assert "only one class (`horses`)" in message and GOOD_LAYOUT_HINT in message


def test_images_without_class_folders(tmp_path, work, pets):
    folder = write_files(tmp_path / "flat", {path.name: path.read_bytes() for path in pets["horses"]})
    message = _error(folder, work)
    assert "are not inside class folders" in message and GOOD_LAYOUT_HINT in message


def test_nested_too_deep(tmp_path, work, pets):
    files = {**class_files(pets, prefix="group1/"), **class_files(pets, prefix="group2/")}
    message = _error(write_files(tmp_path / "deep", files), work)
    assert "nested too deep" in message and GOOD_LAYOUT_HINT in message


def test_class_with_too_few_images(tmp_path, work, pets):
    files = class_files({"horses": pets["horses"], "humans": pets["humans"][:2]})
    message = _error(write_files(tmp_path / "few", files), work)
    assert "`humans` leaves only 1 image(s) for training" in message


def test_missing_source(tmp_path, work):
    assert "does not exist" in _error(tmp_path / "nowhere", work)


def test_validation_fraction_is_checked(tmp_path, work, pets):
    folder = write_files(tmp_path / "pets", class_files(pets))
    with pytest.raises(DatasetError, match="between 0 and 1"):
        load_dataset(folder, work_dir=work, val_split=1.5)


def test_default_work_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TLCORE_HOME", str(tmp_path / "home"))
    assert datasets.default_work_dir() == tmp_path / "home"
    monkeypatch.delenv("TLCORE_HOME")
    assert datasets.default_work_dir() == Path.home() / ".tlcore"
