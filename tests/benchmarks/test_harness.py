"""The benchmark harness: timing, side-by-side ratios, JSON round trip, table and plot."""
import json
import types

import pytest
import torch

from seedfast.benchmarks import vq as vq_suite
from seedfast.benchmarks.harness import (
    Case, Impl, PeerUnavailable, format_table, load_result, plot_speedups, run_suites, speedups, time_callable, write_result,
)
from seedfast.cli import main


def _suite():
    def build(factor):
        def b(case, device):
            x = torch.randn(case.params["n"], 64)
            return lambda: [x @ x.t() for _ in range(factor)]
        return b

    def unavailable(case, device):
        raise PeerUnavailable("not here")

    return types.SimpleNamespace(
        cases=lambda quick, device: [Case("toy", "fwd", {"n": n, "dtype": "fp32"}, flops=2.0 * n * n * 64, size=n)
                                     for n in (64, 256)],
        impls=[Impl("ours", build(1), ours=True), Impl("slow", build(4)), Impl("missing", unavailable)],
    )


def test_time_callable_orders_work():
    x = torch.randn(256, 256)
    fast = time_callable(lambda: x @ x, torch.device("cpu"), budget_ms=30)
    slow = time_callable(lambda: [x @ x for _ in range(8)], torch.device("cpu"), budget_ms=30)
    assert fast.reps >= 5 and fast.q20_ms <= fast.median_ms <= fast.q80_ms
    assert slow.median_ms > 2 * fast.median_ms


def test_run_write_load_table_plot(tmp_path):
    result = run_suites([_suite()], quick=True, device=torch.device("cpu"), budget_ms=20)
    assert len(result.measurements) == 6
    missing = [m for m in result.measurements if m.impl == "missing"]
    assert all(m.error == "unavailable: not here" and m.median_ms is None for m in missing)
    ours = [m for m in result.measurements if m.ours]
    assert all(m.tflops and m.tflops > 0 for m in ours)
    path = write_result(result, tmp_path)
    assert path.name.endswith("-quick.json")
    data = json.loads(path.read_text())
    assert data["device"] and data["env"]["versions"]["torch"] and data["schema"] == 1
    again = load_result(path)
    table = format_table(again)
    assert "× slow" in table and "n/a" in table and "no speed claim" in table
    # The 4× slower peer shows a ratio well above one; the missing one has none.
    rows = speedups(again)
    assert len(rows) == 2
    assert all(r["peers"]["slow"][1] > 1.5 and r["peers"]["missing"][1] is None for r in rows)
    assert "| op |" in format_table(again, markdown=True)
    png = plot_speedups(again, tmp_path / "plot.png")
    assert png.stat().st_size > 1000
    assert main(["bench", "--report", str(path), "--plot", str(tmp_path / "p2.png")]) == 0


def test_vq_suite_closures_run_on_cpu():
    for mode in ("codes", "fwd", "fwd+bwd"):
        case = Case("vq", mode, {"N": 64, "K": 128, "D": 32, "dtype": "fp32"})
        for impl in vq_suite.impls:
            try:
                fn = impl.build(case, torch.device("cpu"))
            except PeerUnavailable:
                continue
            fn()


def test_official_formula_peer_matches_reference():
    from seedfast.ops import vq_quantize_reference

    z, codebook = torch.randn(4, 32, 32), torch.randn(512, 32)
    z_q, codes, loss = vq_suite.official_forward(z, codebook)
    ref = vq_quantize_reference(z, codebook)
    assert torch.equal(codes, ref.codes)
    assert torch.allclose(loss, ref.loss)
    assert torch.allclose(z_q, ref.z_q, atol=1e-6)


def test_load_rejects_other_schema(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"schema": 99}))
    with pytest.raises(ValueError, match="schema 99"):
        load_result(p)


def test_a_raising_peer_is_recorded_not_fatal(tmp_path):
    """Before, anything but PeerUnavailable escaped ``measure`` and aborted the whole run."""
    def broken(case, device):
        raise RuntimeError("peer blew up\non two lines")

    def broken_later(case, device):
        def fn():
            raise ValueError("fails when called")
        return fn

    suite = _suite()
    suite.impls = [*suite.impls, Impl("broken", broken), Impl("broken_later", broken_later)]
    result = run_suites([suite], quick=True, device=torch.device("cpu"), budget_ms=10)
    assert len(result.measurements) == 10
    by_impl = {(m.impl, m.case["n"]): m for m in result.measurements}
    for n in (64, 256):
        assert by_impl["broken", n].error == "error: RuntimeError: peer blew up on two lines"
        assert by_impl["broken_later", n].error == "error: ValueError: fails when called"
        assert by_impl["broken", n].median_ms is None
        assert by_impl["ours", n].median_ms > 0 and by_impl["slow", n].median_ms > 0
    table = format_table(result)
    assert "broken on toy fwd n=64 dtype=fp32: error: RuntimeError: peer blew up" in table
    rows = speedups(result)
    assert all(r["peers"]["broken"][1] is None and r["peers"]["slow"][1] is not None for r in rows)
    tagged = write_result(result, tmp_path, tag="constrained_sample")
    plain = write_result(result, tmp_path)
    assert tagged.name.endswith("-quick-constrained-sample.json") and tagged != plain
    assert load_result(tagged).measurements[-1].error.startswith("error: ")


def test_run_suites_max_cases_and_incremental_saves(tmp_path):
    """A dry run keeps the first cases; each measurement can be saved as soon as it is taken."""
    seen = []
    result = run_suites([_suite()], quick=True, device=torch.device("cpu"), budget_ms=5, max_cases=1,
                        on_measurement=lambda r: seen.append(len(write_result(r, tmp_path, tag="toy").read_text())))
    assert len(result.measurements) == 3 and {m.case["n"] for m in result.measurements} == {64}
    assert len(seen) == 3 and seen[0] < seen[1] < seen[2]
    with pytest.raises(ValueError, match="max_cases"):
        run_suites([_suite()], quick=True, device=torch.device("cpu"), max_cases=0)


def test_write_result_on_a_full_disk_leaves_the_previous_file(tmp_path, monkeypatch):
    from seedfast import checkpoint_io

    result = run_suites([_suite()], quick=True, device=torch.device("cpu"), budget_ms=5, max_cases=1)
    path = write_result(result, tmp_path)
    before = path.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_io, "_write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_result(result, tmp_path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_every_suite_loads_under_its_op_name():
    """One name per op: ``seedfast bench --op NAME`` finds each suite, and the suite names itself so."""
    from seedfast.benchmarks import SUITES, load_suite

    assert {"vq", "qformer_attention", "constrained_sample", "rope_kv_write", "add_rms_norm", "silu_mul",
            "tokenizer", "decode"} <= set(SUITES)
    for name in SUITES:
        assert load_suite(name).NAME == name
    with pytest.raises(ValueError, match="unknown benchmark op 'nope'"):
        load_suite("nope")
