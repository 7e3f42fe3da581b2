"""The attribute space of the procedural scenes and the caption grammar over it.

A scene holds one object, or two objects of different colours side by side or one above the
other. Each object has four attributes: shape, colour, size and position. The captions are
the only sentences of a small grammar (lower case, no punctuation, as SEED's caption cleaning
leaves text)::

    one object   a {size} {colour} {shape} {in the middle | on the left | on the right
                                            | at the top | at the bottom}
    two objects  a {size} {colour} {shape} {above | below | to the left of | to the right of}
                 a {size} {colour} {shape}

In a two-object caption the first object is ``scene.objects[0]``; the relation fixes both
positions (``above``: the first is at the top, the second at the bottom). :func:`make_caption`
and :func:`parse_caption` are exact inverses over every scene of this grammar.

A two-object image therefore has two right captions ("a red circle above a blue square" and
"a blue square below a red circle"). :func:`reading_order_caption` picks one of them, the one
that names the top or left object first.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")
SIZES = ("small", "large")
POSITIONS = ("middle", "left", "right", "top", "bottom")
ATTRIBUTES = ("shape", "colour", "size", "position")

# sRGB in [0, 1]. Hues about 60° or more apart and chroma (max − min) 0.75–0.85, so nearest-hue
# segmentation separates them even after blur, noise and a colour shift.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.05, 0.80, 0.05),
    "blue": (0.10, 0.20, 0.90),
    "yellow": (0.90, 0.85, 0.05),
}
BACKGROUND = (1.0, 1.0, 1.0)

POSITION_PHRASES = {
    "middle": "in the middle",
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}
# (first object's position, second object's position) → the word between them.
RELATIONS: dict[tuple[str, str], str] = {
    ("top", "bottom"): "above",
    ("bottom", "top"): "below",
    ("left", "right"): "to the left of",
    ("right", "left"): "to the right of",
}

_OBJECT = rf"a ({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})"
_ONE_OBJECT = re.compile(rf"{_OBJECT} ({'|'.join(POSITION_PHRASES.values())})")
_TWO_OBJECTS = re.compile(rf"{_OBJECT} ({'|'.join(RELATIONS.values())}) {_OBJECT}")
_POSITION_OF_PHRASE = {phrase: position for position, phrase in POSITION_PHRASES.items()}
_POSITIONS_OF_RELATION = {relation: pair for pair, relation in RELATIONS.items()}


@dataclass(frozen=True)
class ObjectAttributes:
    """What a caption says about one object; each field is one of the named constants.

    Raises
    ------
    ValueError
        A value outside ``SHAPES``, ``COLOURS``, ``SIZES`` or ``POSITIONS``.
    """

    shape: str
    colour: str
    size: str
    position: str

    def __post_init__(self) -> None:
        for name, allowed in (("shape", SHAPES), ("colour", COLOURS), ("size", SIZES), ("position", POSITIONS)):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"ObjectAttributes: {name} must be one of {allowed}, got {value!r}")


@dataclass(frozen=True)
class Scene:
    """The ground truth of an image: its objects, in the order the caption mentions them.

    The checker may also return scenes that no caption describes (none, or three objects, or
    two objects in positions that are not a pair of ``RELATIONS``); :func:`make_caption` rejects those.
    """

    objects: tuple[ObjectAttributes, ...]


def make_caption(scene: Scene) -> str:
    """The caption of ``scene``.

    Raises
    ------
    ValueError
        ``scene`` is not one of the grammar's scenes: not one or two objects, or two objects
        whose positions are not a pair in ``RELATIONS``.
    """
    objects = scene.objects
    if len(objects) == 1:
        (only,) = objects
        return f"{_describe(only)} {POSITION_PHRASES[only.position]}"
    if len(objects) == 2:
        first, second = objects
        relation = RELATIONS.get((first.position, second.position))
        if relation is None:
            raise ValueError(
                f"make_caption: two objects must be at one of {tuple(RELATIONS)}, "
                f"got ({first.position!r}, {second.position!r})"
            )
        return f"{_describe(first)} {relation} {_describe(second)}"
    raise ValueError(f"make_caption: a scene must hold one or two objects, got {len(objects)}")


def parse_caption(text: str) -> Scene | None:
    """The scene a caption describes, or None when ``text`` is not a caption of the grammar.

    Case, surrounding white space, runs of white space and one trailing full stop are
    forgiven (generated text often differs from a caption only in these); anything else that
    is not a sentence of the grammar, including extra words, gives None. Two objects of the
    same colour parse although the generator never draws them.
    """
    normalised = " ".join(text.lower().split()).removesuffix(".").rstrip()
    match = _ONE_OBJECT.fullmatch(normalised)
    if match is not None:
        size, colour, shape, phrase = match.groups()
        return Scene((ObjectAttributes(shape, colour, size, _POSITION_OF_PHRASE[phrase]),))
    match = _TWO_OBJECTS.fullmatch(normalised)
    if match is not None:
        size1, colour1, shape1, relation, size2, colour2, shape2 = match.groups()
        position1, position2 = _POSITIONS_OF_RELATION[relation]
        first = ObjectAttributes(shape1, colour1, size1, position1)
        return Scene((first, ObjectAttributes(shape2, colour2, size2, position2)))
    return None


_READING_RANK = {"top": 0, "left": 0, "middle": 0, "bottom": 1, "right": 1}


def reading_order(scene: Scene) -> Scene:
    """``scene`` with its objects as they are read: top before bottom, left before right.

    One-object scenes, and scenes of objects at equal rank (no caption describes them), come back as given.
    """
    return Scene(tuple(sorted(scene.objects, key=lambda obj: _READING_RANK[obj.position])))


def reading_order_caption(text: str) -> str:
    """The caption of ``text``'s scene that names the top or left object first, or ``text`` as given.

    Of the two captions of a two-object scene it keeps the one with ``above`` or ``to the left
    of``; a one-object caption, and any text that is not a caption of the grammar (see
    :func:`parse_caption`), comes back unchanged. Stage 3 of ``seedfast demo`` teaches its
    captioner this one caption per image (``data.caption_order = "reading"``).
    """
    scene = parse_caption(text)
    if scene is None or len(scene.objects) < 2:
        return text
    return make_caption(reading_order(scene))


def _describe(obj: ObjectAttributes) -> str:
    return f"a {obj.size} {obj.colour} {obj.shape}"
