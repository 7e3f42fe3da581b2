"""The CUDA path: bf16 autocast, frozen weights in bf16, fused AdamW, torch.compile, GPU metrics."""
import pytest

from seedfast.train.loop import train

from .helpers import steps_of, tiny

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("stage, steps", [(2, 30), (3, 30)])
def test_trains_on_the_gpu_with_compile(tmp_path, stage, steps):
    train(tiny(stage, "train.compile=true"), tmp_path, steps=steps, device="cuda", progress=False)
    records = steps_of(tmp_path)
    assert records[-1]["loss"] < 0.6 * records[0]["loss"]
    last = records[-1]
    assert last["mfu"] is not None and last["mfu"] > 0
    assert last["peak_mem_gib"] > 0 and last["gpu_util"] is not None and last["gpu_mem_gib"] > 0
