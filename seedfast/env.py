"""What this machine is: versions, CUDA, and the GPU (through nvidia-ml-py where present)."""
from __future__ import annotations

import importlib.metadata
import platform
import re
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as NVML (or torch, without NVML) reports it."""

    index: int
    name: str
    memory_total_mib: int | None = None
    driver: str | None = None
    compute_capability: str | None = None
    utilisation_percent: int | None = None


@dataclass(frozen=True)
class EnvInfo:
    """Versions and devices, for ``seedfast env`` and every benchmark JSON."""

    python: str
    platform: str
    cpu: str
    versions: dict[str, str | None]
    cuda_runtime: str | None
    gpus: list[GpuInfo] = field(default_factory=list)
    gpu_note: str = ""

    @property
    def device_name(self) -> str:
        """The first GPU's name, else the CPU's."""
        return self.gpus[0].name if self.gpus else self.cpu

    def as_dict(self) -> dict:
        return asdict(self)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return re.sub(r"\s+", " ", line.split(":", 1)[1]).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvml_gpus() -> tuple[list[GpuInfo], str]:
    try:
        import pynvml
    except ImportError:
        return [], "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as err:
        return [], f"no NVIDIA GPU (NVML: {err})"
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            gpus.append(GpuInfo(
                index=i,
                name=name.decode() if isinstance(name, bytes) else name,
                memory_total_mib=pynvml.nvmlDeviceGetMemoryInfo(h).total // 2**20,
                driver=driver.decode() if isinstance(driver, bytes) else driver,
                compute_capability=f"{major}.{minor}",
                utilisation_percent=pynvml.nvmlDeviceGetUtilizationRates(h).gpu,
            ))
        return gpus, ""
    finally:
        pynvml.nvmlShutdown()


def collect() -> EnvInfo:
    """Gather versions and devices. Never raises for a missing GPU or NVML."""
    import torch

    gpus, note = _nvml_gpus()
    if not gpus and torch.cuda.is_available():
        gpus = [
            GpuInfo(index=i, name=torch.cuda.get_device_name(i),
                    compute_capability="{}.{}".format(*torch.cuda.get_device_capability(i)))
            for i in range(torch.cuda.device_count())
        ]
        note = ""
    if not gpus and not note:
        note = "no NVIDIA GPU"
    versions = {name: _version(name) for name in (
        "seedfast", "torch", "triton", "transformers", "diffusers", "kernels", "peft", "safetensors",
        "numpy", "flash-attn", "xformers", "nvidia-ml-py",
    )}
    return EnvInfo(
        python=platform.python_version(),
        platform=platform.platform(),
        cpu=cpu_name(),
        versions=versions,
        cuda_runtime=torch.version.cuda,
        gpus=gpus,
        gpu_note=note,
    )


def format_env(info: EnvInfo) -> str:
    """Human-readable report for ``seedfast env``."""
    lines = [f"python       {info.python} ({info.platform})", f"cpu          {info.cpu}"]
    for name, ver in info.versions.items():
        # "kernels" alone would read as seedfast.kernels: this is Hugging Face's package.
        label = "hf kernels" if name == "kernels" else name
        lines.append(f"{label:<12} {ver or 'not installed'}")
    lines.append(f"cuda runtime {info.cuda_runtime or 'none (CPU build of torch)'}")
    if info.gpus:
        for g in info.gpus:
            mem = f", {g.memory_total_mib} MiB" if g.memory_total_mib else ""
            cc = f", sm_{g.compute_capability.replace('.', '')}" if g.compute_capability else ""
            drv = f", driver {g.driver}" if g.driver else ""
            lines.append(f"gpu {g.index}        {g.name}{mem}{cc}{drv}")
    else:
        lines.append(f"gpu          none: {info.gpu_note}")
    return "\n".join(lines)
