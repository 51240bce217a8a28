"""Values that users' existing data depends on, pinned between versions.

Every value below was computed once and written down. A change to any of them moves existing users' images
to other splits, gives their pairs other seeds, names or bytes, or makes a rerun write new shard parts
instead of replacing the old ones. Such a change must be deliberate: bump the recipe `version` or the
package version, say so in the README/changelog, and only then update the value here.

The pair bytes also depend on Pillow (libjpeg, FreeType, resampling) and numpy's random streams: when
only those tests fail after an upgrade, the upgrade changes users' pairs, and the note above applies too.
"""

import hashlib

import pytest

from pixelmill.tasks.core.shards import shard_id
from pixelmill.tasks.prep.crappify import pair_id
from pixelmill.tasks.prep.degrade import derive_seed
from pixelmill.tasks.prep.ingest import assign_split
from pixelmill.tasks.prep.recipes import apply_recipe, get_recipe, list_recipes
from tests.helpers import make_image

# sha256 of b"photo 0" ... b"photo 5": content hashes like ingest's
SHAS = [
    "96210597a3cedee79899b4b1a5068078e7ac45d7489f7ceeb69383db21f322a5",
    "e5a5555d73bc0e1568d65563abf327bd6c0b9b9dc3336e86e0b17e865e9ee6d2",
    "9b73ce2e5c72e9c8eb35ae3f509ef901b26ed3e9811f0782f3633cceab140918",
    "73fb47247808eefa92140859d5aeee8955cca452b9f6873e67ecbeba9276a3f4",
    "e92d4919f74cf9d832a17364db8f1618988e54d676cc054b2b32d812dd256bc1",
    "5c25ac2e072d6f55001fc3a57c2f89ee4bd0ee260e5703a930c24540eff20de5",
]

RECIPE_HASHES = {
    "lesson7": "200d991d03221483",
    "sr-x2": "beb83c1ec6b50161",
    "sr-x4": "938648b5a88e1de6",
    "dejpeg": "404a9dc2cccc10b3",
    "watermark": "15425ec23c20f76e",
    "denoise": "5691b43841e1352b",
    "colorize": "2370b599336e626c",
    "realistic": "ba5042f6d3e8cc7c",
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("fractions, splits", [
    ((0.8, 0.1, 0.1), ["train", "valid", "train", "train", "test", "train"]),
    ((0.7, 0.3, 0.0), ["train", "valid", "train", "train", "valid", "train"]),
    ((0.5, 0.25, 0.25), ["valid", "test", "valid", "train", "test", "train"]),
])
def test_assign_split(fractions, splits):
    assert [assign_split(sha, fractions) for sha in SHAS] == splits


@pytest.mark.parametrize("prefix, split", [
    ("000000000000", "train"),
    ("cccccccccccc", "train"),  # just under 0.8
    ("cccccccccccd", "valid"),  # just over 0.8
    ("e66666666666", "valid"),  # just under 0.9
    ("e66666666667", "test"),   # just over 0.9
    ("ffffffffffff", "test"),
])
def test_assign_split_boundaries(prefix, split):
    assert assign_split(prefix + "0" * 52, (0.8, 0.1, 0.1)) == split


def test_recipe_hashes_of_every_shipped_recipe():
    assert {r.name: r.recipe_hash for r in list_recipes()} == RECIPE_HASHES


def test_derive_seed():
    assert [derive_seed(sha, RECIPE_HASHES["lesson7"], 0) for sha in SHAS[:3]] == [
        2441633016147250492, 5071453933621348614, 5732022122238934813]
    assert [derive_seed(sha, RECIPE_HASHES["sr-x2"], 7) for sha in SHAS[:3]] == [
        7214039964622038067, 7624459161830309771, 135225336751409276]


def test_pair_id():
    assert pair_id(SHAS[0], RECIPE_HASHES["lesson7"], 0) == "24c59934073b01e5042a"
    assert pair_id(SHAS[1], RECIPE_HASHES["sr-x2"], 7) == "a613b103f1a6404eaf8e"


def test_shard_id():
    # the shapes of ingest's and crappify's keys
    assert shard_id("photos", {"split_fractions": [0.8, 0.1, 0.1]},
                    [("file:///data/a.png", 123, "mtime-1")]) == "1ed7016e59b408b0d8bd"
    assert shard_id("photos-lesson7", RECIPE_HASHES["lesson7"], 0, SHAS[:2]) == "d4fa2174e4bc1b79e247"


@pytest.fixture(scope="module")
def image():
    img = make_image(seed=0)
    # pinned too, so that a change to the test helper is not mistaken for a change to the pairs
    assert (img.size, img.mode, sha(img.tobytes())) == (
        (200, 150), "RGB", "7fa0a07b2329b1cf90dc8c5a02b4e5e141dad98d9e97e13afcb3c866b181d28f")
    return img


HR_SHA = "4a3248d3398e787c3b959886aa88ec3e3c6916bed7580ebd6ea91cdb58876003"


def test_lesson7_pair_bytes(image):
    result = apply_recipe(get_recipe("lesson7"), image, seed=1234)
    # the draws first: when only the bytes differ, the encoder or resampler changed, not the random stream
    assert result.params["steps"] == [
        {"op": "downscale", "applied": True, "method": "bilinear", "width": 128, "height": 96},
        {"op": "watermark", "applied": True, "text": "69", "size": 11, "opacity": 1.0, "fill": [255, 255, 255],
         "x": 63, "y": 6, "box": [63, 9, 75, 17]},
        {"op": "jpeg", "applied": True, "quality": 69},
    ]
    assert sha(result.lr_bytes) == "f68b37bb6a73ce478638f6bee2e388d9f3b25e898aa800df739489cc2faa2075"
    assert sha(result.hr_bytes) == HR_SHA


def test_sr_x2_pair_bytes(image):
    result = apply_recipe(get_recipe("sr-x2"), image, seed=1234)
    assert result.params["target"] == [{"op": "modcrop", "applied": True, "width": 200, "height": 150}]
    assert result.params["steps"] == [{"op": "downscale", "applied": True, "method": "bicubic", "width": 100,
                                       "height": 75}]
    assert sha(result.lr_bytes) == "6132f94cc65af455a3f8403cdb84659a14ea3dd05a56ad00f3c3f802fd62a107"
    assert sha(result.hr_bytes) == HR_SHA
