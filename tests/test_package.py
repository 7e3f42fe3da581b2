"""The package: cheap import, the console script, ``seedfast env``."""
import subprocess
import sys

from seedfast.cli import main


def _python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_import_is_cheap():
    out = _python(
        "import sys, seedfast; print(sorted(m for m in ('torch', 'triton', 'transformers', 'diffusers') if m in sys.modules))"
    )
    assert out.strip() == "[]"
    out = _python(
        "import sys, seedfast.ops; print(sorted(m for m in ('triton', 'transformers', 'diffusers') if m in sys.modules))"
    )
    assert out.strip() == "[]"


def test_kernels_package_is_free_of_imports():
    out = _python("import sys, seedfast.kernels; print('torch' in sys.modules, 'triton' in sys.modules)")
    assert out.strip() == "False False"


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "seedfast", "--help"], capture_output=True, text=True, check=True)
    for sub in ("env", "bench", "convert"):
        assert sub in out.stdout


def test_env_reports_versions_and_gpu(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "triton" in out
    import torch

    if not torch.cuda.is_available():
        assert "gpu          none: no NVIDIA GPU" in out


def test_unknown_bench_op_is_one_line_error(capsys):
    assert main(["bench", "--op", "nope", "--no-save"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark op 'nope'" in err and "Traceback" not in err


def test_convert_missing_checkpoint_is_one_line_error(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "missing.pt" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
