"""The caption grammar: make_caption and parse_caption are exact inverses."""
from __future__ import annotations

import itertools

import pytest

from seedfast.data import (COLOURS, POSITIONS, SHAPES, SIZES, ObjectAttributes, Scene, make_caption, parse_caption,
                           reading_order_caption)
from seedfast.data.scene import RELATIONS


def _all_objects(positions=POSITIONS):
    return [ObjectAttributes(shape, colour, size, position)
            for shape, colour, size, position in itertools.product(SHAPES, COLOURS, SIZES, positions)]


def _all_scenes():
    scenes = [Scene((obj,)) for obj in _all_objects()]
    for first_position, second_position in RELATIONS:
        for first in _all_objects((first_position,)):
            for second in _all_objects((second_position,)):
                scenes.append(Scene((first, second)))
    return scenes


def test_every_scene_round_trips_and_captions_are_distinct():
    scenes = _all_scenes()
    assert len(scenes) == 3 * 4 * 2 * 5 + 4 * (3 * 4 * 2) ** 2
    captions = [make_caption(scene) for scene in scenes]
    assert len(set(captions)) == len(captions)
    for scene, caption in zip(scenes, captions):
        assert parse_caption(caption) == scene


def test_caption_wording():
    large_red_circle = ObjectAttributes("circle", "red", "large", "middle")
    assert make_caption(Scene((large_red_circle,))) == "a large red circle in the middle"
    above = Scene((ObjectAttributes("circle", "red", "small", "top"),
                   ObjectAttributes("square", "blue", "large", "bottom")))
    assert make_caption(above) == "a small red circle above a large blue square"
    left = Scene((ObjectAttributes("triangle", "green", "large", "right"),
                  ObjectAttributes("circle", "yellow", "small", "left")))
    assert make_caption(left) == "a large green triangle to the right of a small yellow circle"


def test_parse_forgives_case_spacing_and_a_full_stop():
    expected = Scene((ObjectAttributes("triangle", "green", "large", "left"),))
    for text in ["a large green triangle on the left", "  A Large GREEN triangle   on the left.  ",
                 "a large green triangle on the left ."]:
        assert parse_caption(text) == expected


@pytest.mark.parametrize("text", [
    "",
    "a large green triangle",
    "a large green triangle on the left and more",
    "the large green triangle on the left",
    "a huge green triangle on the left",
    "a large purple triangle on the left",
    "a large green hexagon on the left",
    "a large green triangle on the left..",
    "a large green triangle above",
    "a large green triangle above a small red",
    "a large green triangle next to a small red circle",
    "a large green triangle, on the left",
])
def test_parse_rejects_text_outside_the_grammar(text):
    assert parse_caption(text) is None


def test_same_colour_pairs_parse():
    scene = parse_caption("a small red circle above a large red square")
    assert scene is not None and [o.colour for o in scene.objects] == ["red", "red"]


def test_make_caption_rejects_scenes_without_a_caption():
    obj = ObjectAttributes("circle", "red", "small", "top")
    other = ObjectAttributes("square", "blue", "small", "left")
    with pytest.raises(ValueError, match="one or two objects"):
        make_caption(Scene(()))
    with pytest.raises(ValueError, match="one or two objects"):
        make_caption(Scene((obj, other, obj)))
    with pytest.raises(ValueError, match="two objects must be at one of"):
        make_caption(Scene((obj, other)))


@pytest.mark.parametrize("field,value", [("shape", "hexagon"), ("colour", "purple"), ("size", "huge"),
                                         ("position", "corner")])
def test_object_attributes_reject_unknown_values(field, value):
    values = dict(shape="circle", colour="red", size="small", position="middle")
    values[field] = value
    with pytest.raises(ValueError, match=f"{field} must be one of"):
        ObjectAttributes(**values)


def test_reading_order_caption_picks_one_of_the_two_captions_of_a_scene():
    assert (reading_order_caption("a large blue circle below a small red square")
            == "a small red square above a large blue circle")
    assert (reading_order_caption("a small red square to the right of a large green triangle")
            == "a large green triangle to the left of a small red square")
    restated = {}
    for scene in _all_scenes():
        caption = make_caption(scene)
        out = reading_order_caption(caption)
        if len(scene.objects) == 1:
            assert out == caption
            continue
        # The same scene, objects matched as sets; the first named is at the top or on the left.
        assert set(parse_caption(out).objects) == set(scene.objects)
        assert parse_caption(out).objects[0].position in ("top", "left")
        assert reading_order_caption(out) == out
        restated.setdefault(out, set()).add(caption)
    # Every two-object scene's two captions map to one: half the captions, each from two.
    assert all(len(sources) == 2 for sources in restated.values())
    assert len(restated) == 2 * (3 * 4 * 2) ** 2


@pytest.mark.parametrize("text", ["a red circle", "", "a small red circle below a large blue square and more"])
def test_reading_order_caption_keeps_text_outside_the_grammar(text):
    assert reading_order_caption(text) == text
