"""Output names in the plan: mirrored, first come keeps a name, suffixes from the input's own name, stale files."""

from __future__ import annotations

from pixelmill.tasks.core.names import collision_key
from pixelmill.tasks.inference.plan import ApplyItem, name_outputs

OUT = "file:///out"


def items(*rels: str) -> list[ApplyItem]:
    return [ApplyItem(f"file:///in/{r}", r, 1, "v") for r in rels]


def named(todo, owners=None, outputs=None, overlay=False, ext="png") -> dict[str, ApplyItem]:
    return {i.rel: i for i in name_outputs(todo, owners or {}, outputs or {}, OUT, lambda rel: ext, overlay)}


def test_plain_names_mirror_and_the_first_by_name_keeps_a_contested_one():
    got = named(items("dup/a.tif", "dup/a.jpg", "2019/photo.jpg"))
    assert got["2019/photo.jpg"].output_rel == "2019/photo.png"
    assert got["dup/a.jpg"].output_rel == "dup/a.png"
    assert got["dup/a.tif"].output_rel.startswith("dup/a-") and got["dup/a.tif"].output_rel.endswith(".png")


def test_an_owner_in_the_catalog_keeps_its_name_against_a_newcomer():
    owners = {collision_key("dup/a.png"): "file:///in/dup/a.tif"}
    got = named(items("dup/a.jpg", "dup/a.tif"), owners)
    assert got["dup/a.tif"].output_rel == "dup/a.png"
    assert got["dup/a.jpg"].output_rel.startswith("dup/a-")


def test_names_that_differ_only_in_case_or_clean_alike_collide():
    got = named(items("A.jpg", "a.png"))
    assert {got["A.jpg"].output_rel, got["a.png"].output_rel} & {"A.png", "a.png"}
    assert collision_key(got["A.jpg"].output_rel) != collision_key(got["a.png"].output_rel)
    got = named(items("a\u200bb.jpg", "a_b.jpg"))  # a zero-width space cleans to "_"
    assert got["a\u200bb.jpg"].output_rel != got["a_b.jpg"].output_rel


def test_a_mask_overlay_is_a_name_too():
    got = named(items("a.jpg", "a.overlay.jpg"), overlay=True)
    assert got["a.jpg"].output_rel == "a.png"  # its overlay is a.overlay.png ...
    assert got["a.overlay.jpg"].output_rel.startswith("a.overlay-")  # ... so this mask may not take that name


def test_older_outputs_of_the_same_input_are_stale_but_never_its_new_name_or_overlay():
    me = "file:///in/p.jpg"
    outputs = {me: {f"{OUT}/p-0123456789.png", f"{OUT}/p.png", f"{OUT}/p.overlay.png", f"{OUT}/p.jpg"}}
    got = named(items("p.jpg"), outputs=outputs)
    assert got["p.jpg"].output_rel == "p.png"
    assert got["p.jpg"].stale == (f"{OUT}/p-0123456789.png", f"{OUT}/p.jpg")


def test_unsafe_names_take_no_name():
    got = named(items("bad\nname.jpg", "bad_name.jpg"))
    assert got["bad\nname.jpg"].output_rel == ""
    assert got["bad_name.jpg"].output_rel == "bad_name.png"
