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
