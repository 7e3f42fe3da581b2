"""pytest-benchmark regressions: ``pytest bench --benchmark-enable`` times them; the default
test run (``--benchmark-disable``) runs each once as a smoke test."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
