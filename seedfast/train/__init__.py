"""The lean training loop: stages 1–3, data pipeline, checkpoints, budget/MFU accounting."""
from __future__ import annotations

from seedfast._lazy import lazy_exports

# Exports resolve on first use, so that building the ``seedfast`` command line (which imports
# seedfast.train.cli) does not import torch.distributed.checkpoint, peft or transformers.
_EXPORTS = {
    "RunConfig": "seedfast.train.config",
    "ConfigError": "seedfast.train.config",
    "build_config": "seedfast.train.config_sources",
    "read_preset": "seedfast.train.config_sources",
    "read_toml": "seedfast.train.config_sources",
    "train": "seedfast.train.loop",
    "train_step": "seedfast.train.loop",
    "learning_rate": "seedfast.train.loop",
    "TrainResult": "seedfast.train.loop",
    "CheckpointError": "seedfast.train.checkpoint",
    "precompute": "seedfast.train.features",
    "FeatureStore": "seedfast.train.features",
    "WordTokenizer": "seedfast.train.text",
    "StandInTarget": "seedfast.train.targets",
    "compute_budget": "seedfast.train.budget",
    "format_budget": "seedfast.train.budget",
    "tokenizer_step_flops": "seedfast.train.metrics",
    "llm_step_flops": "seedfast.train.metrics",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
