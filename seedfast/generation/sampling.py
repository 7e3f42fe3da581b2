"""How SEED-LLaMA samples: :class:`SamplingParams`, one per request or one for a whole batch."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seedfast._checks import is_int

GENERATION_CONFIG_FILE = "generation_config.json"


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class SamplingParams:
    """One request's sampling settings; the defaults are the official scripts' (temperature 1,
    top-p 0.5, transformers' implicit top-k 50).

    Attributes
    ----------
    max_new_tokens : int
        ``>= 1``. A limit that falls inside an image lets the image finish (at most
        ``codes_per_image + 1`` more tokens).
    temperature : float
        ``>= 0``; ``0``: greedy.
    top_k : int
        ``<= 0``: off.
    top_p : float
        In (0, 1]; ``1``: off.

    Raises
    ------
    ValueError
        A value of the wrong type or out of range, naming the field.
    """

    max_new_tokens: int = 120
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 0.5

    def __post_init__(self) -> None:
        checks = {
            "max_new_tokens": (is_int(self.max_new_tokens) and self.max_new_tokens >= 1, "an int >= 1"),
            "temperature": (_is_number(self.temperature) and self.temperature >= 0, "a finite number >= 0"),
            "top_k": (is_int(self.top_k), "an int"),
            "top_p": (_is_number(self.top_p) and 0 < self.top_p <= 1, "a number in (0, 1]"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise ValueError(f"SamplingParams: {name} must be {expected}, got {getattr(self, name)!r}")

    @classmethod
    def greedy(cls, max_new_tokens: int = 120) -> SamplingParams:
        """Argmax decoding."""
        return cls(max_new_tokens=max_new_tokens, temperature=0.0, top_k=0, top_p=1.0)

    def replace(self, **overrides: Any) -> SamplingParams:
        """These settings with the given (non-None) ones replacing them."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def from_generation_config(cls, folder: str | Path) -> SamplingParams:
        """Defaults from a checkpoint's ``generation_config.json`` (absent: the official defaults).

        ``do_sample: false`` means greedy (temperature 0); ``max_new_tokens``, ``temperature``,
        ``top_k`` and ``top_p`` are taken when present.

        Raises
        ------
        ValueError
            The file is not JSON, or a value has the wrong type (naming the file and key).
        """
        path = Path(folder) / GENERATION_CONFIG_FILE
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not valid JSON ({' '.join(str(err).split())})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object")
        kinds = {"max_new_tokens": int, "temperature": (int, float), "top_k": int, "top_p": (int, float)}
        values: dict[str, Any] = {}
        for key, kind in kinds.items():
            if key in data and data[key] is not None:
                if isinstance(data[key], bool) or not isinstance(data[key], kind):
                    raise ValueError(f"{path}: {key} must be a number, got {data[key]!r}")
                values[key] = data[key]
        if data.get("do_sample") is False:
            values["temperature"] = 0.0
        try:
            return cls(**values)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None


__all__ = ["GENERATION_CONFIG_FILE", "SamplingParams"]
