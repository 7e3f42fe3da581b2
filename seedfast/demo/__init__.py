"""``seedfast demo``: every SEED model trained from scratch on the CPU, measured and reported;
and the user commands (``tokenize``, ``detokenize``, ``generate``, ``caption``) on its models.

Nothing here is imported by the rest of seedfast; :mod:`seedfast.demo.cli` adds the commands
to the ``seedfast`` parser. The names below load on first use, so that building the CLI parser
(``seedfast --help``) does not import torch.
"""
from __future__ import annotations

from seedfast._lazy import lazy_exports

_EXPORTS = {
    "DemoConfig": ".config",
    "StageSettings": ".config",
    "DemoModelError": ".models",
    "DemoModels": ".models",
    "EmbeddingNormaliser": ".models",
    "Manifest": ".models",
    "NormalisedDetokenizer": ".models",
    "DemoError": ".pipeline",
    "DemoResult": ".pipeline",
    "evaluate": ".pipeline",
    "run_demo": ".pipeline",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
