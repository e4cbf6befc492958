"""A one-line description of the hardware a result was measured on (written into every metrics file)."""

from __future__ import annotations

import os
import platform

import torch


def describe() -> str:
    """E.g. ``"NVIDIA H100 80GB HBM3 (CUDA 12.8), torch 2.13.0"`` or ``"CPU: 2 cores, x86_64, torch 2.13.0+cpu"``."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return f"{name} x{torch.cuda.device_count()} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"CPU: {os.cpu_count()} cores, {cpu}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX flags in /proc/cpuinfo; Linux).
    Without them bfloat16 is emulated and runs slower than float32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def available_memory_gb() -> float:
    """MemAvailable from /proc/meminfo (free pages elsewhere), in GB."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
