"""Where a result came from: package and torch versions, the git commit of a checkout, device, threads.

Recorded in every ``metrics.json`` a training or evaluation writes, in reports and in
``latentquant.evaluate``'s result, so a number can be traced back to the code and machine that produced it.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

_PACKAGE_DIR = Path(__file__).resolve().parent


def git_commit(path: Path = _PACKAGE_DIR) -> str | None:
    """The commit of the git checkout holding ``path`` (suffixed ``-dirty`` with uncommitted changes to tracked
    files), or None when it is not in a checkout (an installed wheel) or git is unavailable."""
    try:
        head = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    return commit + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def device_name(device: torch.device | str) -> str:
    """``"cpu"``, or ``"cuda:0 (NVIDIA H200)"`` for a GPU."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


def provenance(device: torch.device | str = "cpu", wall_time_s: float | None = None) -> dict[str, Any]:
    """A JSON-ready record of the software and machine.

    Returns:
        ``latentquant_version``, ``git_commit`` (None outside a checkout), ``torch_version``, ``python_version``,
        ``platform``, ``device``, ``num_threads`` (torch's intra-op threads), ``cpu_capability`` (the SIMD level
        torch picked its CPU kernels for, e.g. "AVX2", "AVX512": CPU results differ between levels),
        ``openmp_wait`` (the process's ``OMP_WAIT_POLICY`` / ``GOMP_SPINCOUNT``, ``None`` where unset: they
        change the speed beside other processes, never the numbers; see ``latentquant._openmp``), ``malloc``
        (the process's glibc allocator thresholds ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``, the
        same: speed only), and ``wall_time_s`` when given.
    """
    from latentquant import __version__

    out: dict[str, Any] = {
        "latentquant_version": __version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "device": device_name(device),
        "num_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "openmp_wait": {name: os.environ.get(name) for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")},
        "malloc": {
            name: os.environ.get(name) for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
        },
    }
    if wall_time_s is not None:
        out["wall_time_s"] = round(float(wall_time_s), 3)
    return out
