import posixpath
import unicodedata

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pixelmill.tasks.core.names import (
    NAME_MAX,
    STEM_MAX_BYTES,
    collision_key,
    mirror_relpath,
    output_relpath,
    output_stem,
    storable,
    unsafe_reason,
)

SHA = "0123456789abcdef" * 4
hashes = st.text("0123456789abcdef", min_size=10, max_size=64)
# Any text, lone surrogates (undecodable local names) included.
names = st.text(st.characters(codec=None, exclude_categories=()), max_size=400)


def old_pair_stem(uri: str) -> str:
    """How crappify named pairs before names.py: what ordinary names must keep, byte for byte."""
    return posixpath.splitext(posixpath.basename(uri))[0]


def assert_safe_component(name: str, max_bytes: int = NAME_MAX) -> None:
    assert name and name not in (".", "..") and not name.startswith(".")
    assert "/" not in name and "\\" not in name
    assert not any(unicodedata.category(c) in {"Cc", "Cf", "Cs", "Zl", "Zp"} for c in name)
    assert len(name.encode("utf-8")) <= max_bytes


@settings(max_examples=500, deadline=None)
@given(names, hashes)
@example("../../evil.png", SHA)
@example("/abs/evil.png", SHA)
@example("new\nline.png", SHA)
@example("dir\\..\\win.png", SHA)
@example("." * 300, SHA)
@example("", SHA)
def test_output_stem_is_safe_bounded_and_stable_for_any_name(name, digest):
    stem = output_stem(name, digest)
    assert_safe_component(stem, STEM_MAX_BYTES)
    assert stem.endswith(digest[:10])
    assert output_stem(name, digest) == stem
    assert unicodedata.normalize("NFC", stem) == stem


@settings(max_examples=300, deadline=None)
@given(names, hashes, st.integers(12, 300))
def test_output_stem_keeps_any_bound(name, digest, max_bytes):
    assert_safe_component(output_stem(name, digest, max_bytes), max_bytes)


ordinary = st.text(st.characters(exclude_categories=("Cc", "Cf", "Cs", "Zl", "Zp"), exclude_characters="/\\"),
                   min_size=1, max_size=60).filter(
    lambda s: not s.startswith(".") and unicodedata.normalize("NFC", s) == s)


@settings(max_examples=300, deadline=None)
@given(ordinary, st.sampled_from([".jpg", ".png", ".JPEG", ""]))
@example("photo", ".jpg")
@example("my photo (1)", ".JPG")
@example("holiday..2019", ".jpg")
@example("x" * 214, ".png")
def test_ordinary_names_keep_their_old_pair_names_byte_for_byte(stem, ext):
    uri = f"file:///photos/2019/{stem}{ext}"
    assert output_stem(uri, SHA) == f"{old_pair_stem(uri)}-{SHA[:10]}"


def test_odd_names_get_readable_safe_stems():
    assert output_stem("zip://sub/photo.jpg", SHA) == "photo-0123456789"
    assert output_stem("new\nline.png", SHA) == "new_line-0123456789"
    assert output_stem("dir\\..\\win.png", SHA) == "win-0123456789"  # a Windows zip's folders
    assert output_stem(".hidden.png", SHA) == "_hidden-0123456789"  # never a hidden output
    assert output_stem("e\u0301te\u0301.png", SHA) == "\u00e9t\u00e9-0123456789"  # NFC, as macOS names are NFD
    assert output_stem("", SHA) == output_stem("/", SHA) == "0123456789"


def test_long_names_are_cut_on_a_character_boundary_and_kept_apart_by_the_hash():
    name = "日本の写真" * 30 + ".png"  # 450 bytes of UTF-8
    a, b = output_stem(name, SHA), output_stem(name, "f" * 64)
    assert len(a.encode()) <= STEM_MAX_BYTES and a != b
    assert a.startswith("日本の写真日本") and a[:-11] == b[:-11]
    assert len(f"{a}.png".encode()) <= NAME_MAX


def test_bad_hash_or_bound_is_refused():
    with pytest.raises(ValueError, match="hex"):
        output_stem("a.png", "../../x")
    with pytest.raises(ValueError, match="room"):
        output_stem("a.png", SHA, max_bytes=5)
    with pytest.raises(ValueError, match="extension"):
        output_relpath("a.png", SHA, "p/ng")


@pytest.mark.parametrize("name,reason", [
    ("ok.png", None),
    ("sub/deep.png", None),
    ("./from-tar-dot.png", None),  # `tar -cf x.tar .` names every member like this
    ("fötö-日本.png", None),
    ("dir\\..\\win.png", None),  # one legal name: `\\` separates nothing in zip, POSIX or S3
    ("x" * 250 + ".png", None),
    ("../../evil.png", "'..' component"),
    ("a/../../b.png", "'..' component"),
    ("/abs/evil.png", "absolute path"),
    ("new\nline.png", "control character U+000A"),
    ("nul\x00.png", "control character U+0000"),
    ("c1\x85.png", "control character U+0085"),
    ("bad\udcff.png", "undecodable bytes in the name"),
    ("", "empty name"),
])
def test_unsafe_reason(name, reason):
    assert unsafe_reason(name) == reason


@settings(max_examples=300, deadline=None)
@given(st.lists(names, min_size=1, max_size=6).map("/".join), hashes)
@example("../../a/./b//c.png", SHA)
@example("/abs/x.png", SHA)
def test_output_relpath_stays_under_its_prefix(rel, digest):
    path = output_relpath(rel, digest, "png")
    parts = path.split("/")
    for part in parts:
        assert_safe_component(part)
    assert parts[-1].endswith(f"{digest[:10]}.png")
    assert posixpath.normpath(posixpath.join("/out", path)).startswith("/out/")
    assert output_relpath(rel, digest, "png") == path


def test_output_relpath_mirrors_folders():
    assert output_relpath("2019/trip/IMG 1.jpg", SHA, "png") == "2019/trip/IMG 1-0123456789.png"
    assert output_relpath("photos\\2019\\a.jpg", SHA, ".png") == "photos/2019/a-0123456789.png"
    assert output_relpath("../../evil.png", SHA, "png") == "__/__/evil-0123456789.png"


def test_storable_spells_undecodable_bytes():
    assert storable("file:///a b/ü.png") == "file:///a b/ü.png"
    assert storable("file:///bad\udcff.png") == "file:///bad\\xff.png"


@settings(max_examples=300, deadline=None)
@given(st.lists(names, min_size=1, max_size=6).map("/".join), st.booleans())
@example("../../a/./b//c.png", False)
@example(".hidden.png", True)
def test_mirror_relpath_stays_under_its_prefix_and_is_stable(rel, suffixed):
    path = mirror_relpath(rel, "png", suffix_key=rel if suffixed else None)
    for part in path.split("/"):
        assert_safe_component(part)
    assert path.endswith(".png")
    assert posixpath.normpath(posixpath.join("/out", path)).startswith("/out/")
    assert mirror_relpath(rel, "png", suffix_key=rel if suffixed else None) == path


def test_mirror_relpath_keeps_the_name_and_suffixes_only_on_request():
    assert mirror_relpath("2019/photo.jpg", "png") == "2019/photo.png"
    assert mirror_relpath("2019/photo.jpg", "jpg") == "2019/photo.jpg"
    assert mirror_relpath("photos\\2019\\a.jpg", "tif") == "photos/2019/a.tif"
    suffixed = mirror_relpath("2019/a.tif", "png", suffix_key="2019/a.tif")
    assert suffixed.startswith("2019/a-") and suffixed.endswith(".png") and len(suffixed) == len("2019/a-.png") + 10
    assert mirror_relpath("2019/a.tif", "png", suffix_key="2019/a.tif") == suffixed  # from the name: stable
    assert collision_key("Dir/A.PNG") == collision_key("dir/a.png")
