"""Tests of `tlcore.health`: duplicates, leakage, imbalance, tiny classes and image sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from conftest_data import class_files, encode, real_images, write_files
from tlcore.dataset import Dataset, load_dataset
from tlcore.health import (
    DUPLICATE_ACROSS_CLASSES,
    DUPLICATE_ACROSS_SPLITS,
    DUPLICATE_WITHIN_CLASS,
    health_report,
)


@pytest.fixture
def horses(horses_or_humans) -> list[Path]:
    return real_images(horses_or_humans / "horses", 30)


@pytest.fixture
def humans(horses_or_humans) -> list[Path]:
    return real_images(horses_or_humans / "humans", 30)


def _warning(report, text: str) -> str:
    found = [warning for warning in report.warnings if text in warning]
    assert len(found) == 1, report.warnings
    return found[0]


def test_duplicates_within_across_classes_and_across_splits(tmp_path, horses, humans):
    files = {
        **class_files({"horses": horses[:22], "humans": humans[:22]}, prefix="train/"),
        **class_files({"horses": horses[22:26], "humans": humans[22:26]}, prefix="validation/"),
        "train/horses/copy of horse.png": horses[0].read_bytes(),
        "train/humans/mislabelled.png": horses[1].read_bytes(),
        "validation/horses/seen before.png": horses[2].read_bytes(),
    }
    data = load_dataset(write_files(tmp_path / "pets", files), work_dir=tmp_path / "work")
    report = health_report(data)
    kinds = {group.kind: group for group in report.duplicates}
    assert sorted(kinds) == sorted([DUPLICATE_WITHIN_CLASS, DUPLICATE_ACROSS_CLASSES, DUPLICATE_ACROSS_SPLITS])
    assert sorted(kinds[DUPLICATE_WITHIN_CLASS].paths) == ["train/horses/copy of horse.png", f"train/horses/{horses[0].name}"]
    assert sorted(kinds[DUPLICATE_ACROSS_CLASSES].classes) == ["horses", "humans"]
    assert sorted(kinds[DUPLICATE_ACROSS_SPLITS].splits) == ["train", "validation"]
    assert "mislabelled.png" in _warning(report, "different class labels")
    assert "seen before.png" in _warning(report, "looks better than it really is")
    _warning(report, "identical images within a class")
    assert report.ok and report.errors == ()


def test_no_problems_in_a_clean_balanced_set(tmp_path, flowers):
    photos = {name: real_images(flowers / name, 25) for name in ("dandelion", "sunflower")}  # no photo twice among these
    report = health_report(load_dataset(write_files(tmp_path / "flowers", class_files(photos)), work_dir=tmp_path / "work"))
    assert report.ok and report.warnings == () and report.duplicates == () and report.near_duplicates == ()
    assert "No problems found." in report.to_text()


def test_near_identical_frames_are_look_alikes_but_another_horse_in_the_same_pose_is_not(tmp_path, horses_or_humans):
    frames = ("human10-00.png", "human10-03.png")  # one person, a moment apart
    poses = ("horse03-3.png", "horse04-3.png")  # a brown and a grey horse in one pose
    files = {f"humans/{name}": (horses_or_humans / "humans" / name).read_bytes() for name in frames}
    files.update({f"horses/{name}": (horses_or_humans / "horses" / name).read_bytes() for name in poses})
    files.update(class_files({"humans": real_images(horses_or_humans / "humans", 2, "human0*"),
                              "horses": real_images(horses_or_humans / "horses", 2, "horse0[12]*")}))
    report = health_report(load_dataset(write_files(tmp_path / "pets", files), work_dir=tmp_path / "work"))
    assert [sorted(group.paths) for group in report.near_duplicates] == [[f"humans/{name}" for name in frames]]
    assert report.duplicates == ()


def test_imbalance_and_few_images(tmp_path, horses, humans):
    folder = write_files(tmp_path / "pets", class_files({"horses": horses, "humans": humans[:10]}))
    report = health_report(load_dataset(folder, work_dir=tmp_path / "work"))
    imbalance = _warning(report, "unbalanced")
    assert "`horses` has 24 training images but `humans` only 8 (3.0 times fewer)" in imbalance
    assert "balanced class weights" in imbalance
    assert "`humans` has only 8 training images" in _warning(report, "20 or more")


def test_too_few_images_is_an_error(tmp_path, horses, humans):
    data = Dataset(
        root=tmp_path,
        classes=("horses", "humans"),
        train=((horses[0], 0), (horses[1], 0), (humans[0], 1)),
        validation=((horses[2], 0), (humans[1], 1)),
    )
    report = health_report(data)
    assert not report.ok
    assert report.errors == ("The class `humans` has 1 training image(s); each class needs at least 2 to learn from.",)
    assert "Errors:" in report.to_text()


def test_small_images_and_size_distribution(tmp_path, horses, humans):
    small = {f"humans/small {index}.png": encode(Image.open(path).resize((16, 24)), "PNG") for index, path in enumerate(humans[:3])}
    folder = write_files(tmp_path / "pets", {**class_files({"horses": horses[:6], "humans": humans[:3]}), **small})
    report = health_report(load_dataset(folder, work_dir=tmp_path / "work"))
    assert sorted(report.small_images) == ["humans/small 0.png", "humans/small 1.png", "humans/small 2.png"]
    assert "3 image(s) are smaller than 32 pixels" in _warning(report, "blurry")
    assert sorted(report.widths) == [16] * 3 + [300] * 9 and len(report.heights) == 12
    assert report.size_summary() == {
        "width": {"min": 16, "median": 300, "max": 300},
        "height": {"min": 24, "median": 300, "max": 300},
    }


def test_report_formats(tmp_path, horses, humans):
    files = {**class_files({"horses": horses[:5], "humans": humans[:5]}), "notes.txt": b"x"}
    data = load_dataset(write_files(tmp_path / "pets", files), work_dir=tmp_path / "work")
    report = health_report(data)
    as_dict = json.loads(json.dumps(report.to_dict()))
    assert as_dict["classes"] == ["horses", "humans"] and as_dict["ok"] is True
    assert as_dict["counts"] == {"train": {"horses": 4, "humans": 4}, "validation": {"horses": 1, "humans": 1}}
    assert as_dict["skipped"] == [{"path": "notes.txt", "reason": "not an image file"}]
    assert as_dict["image_sizes"]["widths"] == [300] * 10 and as_dict["image_sizes"]["width"]["median"] == 300
    text = report.to_text()
    assert "horses" in text and "notes.txt: not an image file" in text and "total" in text
    frame = report.counts_frame()
    assert list(frame.columns) == ["class", "split", "images"] and frame["images"].sum() == 10
    assert set(frame["split"]) == {"train", "validation"}


def test_converted_images_are_named_as_the_user_knows_them(tmp_path, horses, humans, flowers):
    photo = real_images(flowers / "rose", 1)[0]
    tiff = encode(Image.open(photo), "TIFF")
    files = {**class_files({"horses": horses[:4], "humans": humans[:4]}), "humans/a.tif": tiff, "humans/b.tif": tiff}
    report = health_report(load_dataset(write_files(tmp_path / "pets", files), work_dir=tmp_path / "work"))
    (group,) = report.duplicates
    assert sorted(group.paths) == ["humans/a.tif", "humans/b.tif"]
