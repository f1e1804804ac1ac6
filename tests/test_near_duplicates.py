"""Near-duplicate detection on real flower photos and their edited copies, and the pair search itself."""

from __future__ import annotations

import importlib.util
import io
import os
import random
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance

from tlcore import near_duplicates
from tlcore.near_duplicates import (
    DEFAULT_MAX_DISTANCE,
    HASH_BITS,
    group_pairs,
    hash_distance,
    near_duplicate_pairs,
    perceptual_hash,
)

FLOWERS = Path(__file__).resolve().parents[1].parent / "shared" / "assets" / "datasets" / "flowers"
CLASSES = ("daisy", "dandelion", "rose", "sunflower", "tulip")
# The flowers set holds this photo twice (checked by eye: the same picture, re-processed).
KNOWN_DUPLICATE = ("tulip/10163955604_ae0b830975_n.jpg", "tulip/10164073235_f29931d91e.jpg")


def _missing(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def flowers() -> Path:
    if importlib.util.find_spec("imagehash") is None:
        _missing("imagehash is not installed")
    if not FLOWERS.is_dir():
        _missing(f"offline asset missing: {FLOWERS}")
    return FLOWERS


def _photos(root: Path, per_class: int) -> list[Path]:
    return [path for name in CLASSES for path in sorted((root / name).glob("*.jpg"))[:per_class]]


def _load(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def _reencoded(image: Image.Image, fmt: str, **options) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def _cropped(image: Image.Image, fraction: float = 0.05) -> Image.Image:
    dx, dy = round(image.width * fraction), round(image.height * fraction)
    return image.crop((dx, dy, image.width - dx, image.height - dy))


EDITS = {
    "half size": lambda image: image.resize((image.width // 2, image.height // 2), Image.BICUBIC),
    "double size": lambda image: image.resize((image.width * 2, image.height * 2), Image.BICUBIC),
    "JPEG quality 60": lambda image: _reencoded(image, "JPEG", quality=60),
    "PNG": lambda image: _reencoded(image, "PNG"),
    "10% brighter": lambda image: ImageEnhance.Brightness(image).enhance(1.1),
}


def test_cropped_copies_are_found_at_a_looser_distance(flowers):
    originals = [_load(path) for path in _photos(flowers, 1)]
    distances = [hash_distance(perceptual_hash(image), perceptual_hash(_cropped(image))) for image in originals]
    assert all(distance <= 48 for distance in distances)
    hashes = [perceptual_hash(image) for original in originals for image in (original, _cropped(original))]
    found = near_duplicate_pairs(hashes, max_distance=max(distances))
    assert {(i, j) for i, j, _ in found} >= {(2 * k, 2 * k + 1) for k in range(len(originals))}


def test_edited_copies_of_real_photos_are_grouped_with_their_original(flowers):
    originals = [_load(path) for path in _photos(flowers, 1)]
    images, source = [], []
    for number, original in enumerate(originals):
        for edit in (lambda image: image, *EDITS.values()):
            images.append(edit(original))
            source.append(number)

    hashes = [perceptual_hash(image) for image in images]
    groups = group_pairs(len(hashes), near_duplicate_pairs(hashes))

    expected = [[i for i, number in enumerate(source) if number == photo] for photo in range(len(originals))]
    assert groups == expected


def test_different_real_photos_are_not_paired_but_a_genuine_duplicate_is(flowers):
    paths = _photos(flowers, 10)
    hashes = [perceptual_hash(_load(path)) for path in paths]

    pairs = near_duplicate_pairs(hashes)

    names = [path.relative_to(flowers).as_posix() for path in paths]
    assert [(names[i], names[j]) for i, j, _ in pairs] == [KNOWN_DUPLICATE]


def test_the_hash_ignores_an_alpha_channel_and_fits_in_hash_bits(flowers):
    image = _load(_photos(flowers, 1)[0])

    value = perceptual_hash(image)

    assert perceptual_hash(image.convert("RGBA")) == value
    assert 0 <= value < 2**HASH_BITS
    assert value.bit_length() > HASH_BITS - 64  # the first of the three hashes is not all zeros


def test_unreadable_images_are_never_paired():
    assert near_duplicate_pairs([5, None, 5, None, 2**64 - 1]) == [(0, 2, 0)]
    assert near_duplicate_pairs([None, None]) == []
    assert near_duplicate_pairs([7]) == []
    assert near_duplicate_pairs([]) == []


def test_copies_of_copies_are_grouped_even_when_the_ends_are_far_apart():
    first = 0
    middle = (1 << 20) - 1  # 20 bits from first
    last = middle | (((1 << 20) - 1) << 20)  # 20 bits from middle, 40 from first
    unrelated = 2**192 - 1
    hashes = [last, unrelated, first, None, middle]

    pairs = near_duplicate_pairs(hashes, max_distance=30)

    assert [(i, j) for i, j, _ in pairs] == [(0, 4), (2, 4)]
    assert hash_distance(first, last) > 30
    assert group_pairs(len(hashes), pairs) == [[0, 2, 4]]


def test_groups_are_sorted_and_singletons_dropped():
    assert group_pairs(8, [(6, 5), (3, 1, 4), (1, 0), (5, 7)]) == [[0, 1, 3], [5, 6, 7]]
    assert group_pairs(3, []) == []
    with pytest.raises(ValueError):
        group_pairs(3, [(0, 3)])


@pytest.mark.parametrize(
    "bits, max_distance, numpy_popcount", [(64, 26, True), (192, 88, True), (192, 88, False)]
)
def test_chunked_search_equals_brute_force(monkeypatch, bits, max_distance, numpy_popcount):
    rng = random.Random(bits)
    hashes: list[int | None] = [rng.getrandbits(bits) for _ in range(300)]
    for index in rng.sample(range(300), 60):  # planted near copies, so that many pairs are found
        hashes.append(hashes[index] ^ rng.getrandbits(bits) & rng.getrandbits(bits) & rng.getrandbits(bits))
    for index in rng.sample(range(len(hashes)), 20):
        hashes[index] = None
    # tiny chunks, so that rows of one pair fall in many different chunks
    monkeypatch.setattr(near_duplicates, "_CHUNK_ELEMENTS", 1000)
    if not numpy_popcount:  # as on numpy 1.26, which the requirements still allow
        monkeypatch.delattr(near_duplicates.np, "bitwise_count", raising=False)

    pairs = near_duplicate_pairs(hashes, max_distance)

    expected = [
        (i, j, (a ^ b).bit_count())
        for i, a in enumerate(hashes)
        for j, b in enumerate(hashes)
        if i < j and a is not None and b is not None and (a ^ b).bit_count() <= max_distance
    ]
    assert len(expected) > 100
    assert pairs == expected


def test_default_search_on_random_hashes_finds_only_planted_copies():
    rng = random.Random(0)
    hashes = [rng.getrandbits(HASH_BITS) for _ in range(2000)]
    hashes.append(hashes[123] ^ (1 << 7) ^ (1 << 150))

    assert near_duplicate_pairs(hashes) == [(123, 2000, 2)]


def test_negative_values_are_refused():
    with pytest.raises(ValueError):
        near_duplicate_pairs([1, 2], max_distance=-1)
    with pytest.raises(ValueError):
        near_duplicate_pairs([1, -2])
    assert DEFAULT_MAX_DISTANCE >= 0
