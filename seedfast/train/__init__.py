"""The lean training loop: stages 1–3, data pipeline, checkpoints, budget/MFU accounting."""
