"""The package: cheap import, the console script, ``seedfast env``."""
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

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


REPO_ROOT = Path(__file__).resolve().parent.parent


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not (_installed("kernels") and _installed("transformers") and _installed("diffusers")),
                    reason="needs Hugging Face's kernels, transformers and diffusers installed")
def test_repo_root_does_not_shadow_hugging_face_kernels():
    # From the repository root the root is sys.path[0], ahead of site-packages: the repo's
    # kernels/ folder must hand `import kernels` over to the installed package.
    code = (
        "import transformers.integrations.hub_kernels, diffusers.loaders.peft, kernels\n"
        "from kernels import CUDAProperties\n"
        "import seedfast.kernels.vq\n"
        "print(kernels.__version__, kernels.__file__, seedfast.kernels.vq.__name__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    version, location, name = proc.stdout.split()
    assert version == importlib.metadata.version("kernels")
    assert not Path(location).resolve().is_relative_to(REPO_ROOT / "kernels")
    assert name == "seedfast.kernels.vq"


def test_repo_kernels_folder_stays_empty_without_hugging_face_kernels():
    # -S: no site-packages, so no other `kernels` to hand over to; what is left must read as
    # "not installed" to transformers' probe (no __version__) and import nothing.
    code = "import sys, kernels; print(hasattr(kernels, '__version__'), 'torch' in sys.modules, kernels.__name__)"
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["False", "False", "kernels"]


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "seedfast", "--help"], capture_output=True, text=True, check=True)
    for sub in ("env", "bench", "convert"):
        assert sub in out.stdout


def test_module_entry_point_runs_only_as_main(monkeypatch):
    """A multiprocessing child spawned from ``python -m seedfast`` imports ``__main__`` as
    ``__mp_main__``: that import must not run the command line again."""
    import runpy

    import seedfast.cli

    calls = []
    monkeypatch.setattr(seedfast.cli, "main", lambda *a: calls.append(a) or 0)
    runpy.run_module("seedfast.__main__", run_name="__mp_main__")
    assert calls == []
    with pytest.raises(SystemExit):
        runpy.run_module("seedfast.__main__", run_name="__main__")
    assert calls == [()]


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


def test_models_exports_resolve_lazily():
    code = (
        "import sys, seedfast.models as m\n"
        "print('torch' in sys.modules)\n"
        "from seedfast.models import SeedTokenizer, SeedTokenizerConfig, Llama, LlamaConfig, SeedDetokenizer\n"
        "from seedfast.models.seed_tokenizer import SeedTokenizer as direct\n"
        "print(SeedTokenizer is direct, all(hasattr(m, n) for n in m.__all__))\n"
    )
    assert _python(code).split() == ["False", "True", "True"]


def test_env_names_hugging_face_kernels(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    expected = importlib.metadata.version("kernels") if _installed("kernels") else "not installed"
    assert f"hf kernels   {expected}" in out
    for name in ("torch", "triton", "transformers", "diffusers"):
        assert any(line.startswith(name) for line in out.splitlines()), name
