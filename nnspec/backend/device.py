"""Which device runs a network: "cpu", "cuda" or "auto" (the GPU when one is
usable, else the CPU).  Finding out imports no CUDA package: the driver is
asked through ctypes, the packages are looked up, not imported.

    resolve("auto") -> "cuda" | "cpu"      resolve("cuda") raises DeviceError
"""
from __future__ import annotations

import ctypes
import functools
import importlib.util
import os

from ..errors import DeviceError

DEVICES = ("cpu", "cuda", "auto")


def simulated() -> bool:
    """Numba's CUDA simulator is on (kernels run as Python threads on the CPU)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def cuda_missing() -> str | None:
    """What stops CUDA here, in words, or None when it is usable."""
    if simulated():
        return None
    missing = []
    if importlib.util.find_spec("numba_cuda") is None:
        missing.append("the numba-cuda package is not installed (pip install 'nnspec[cuda]')")
    why = _driver()
    if why:
        missing.append(why)
    return "; ".join(missing) or None


def _driver() -> str | None:
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return "no CUDA driver (libcuda.so.1 not found)"
    try:
        rc = lib.cuInit(0)
        n = ctypes.c_int(0)
        if rc == 0:
            rc = lib.cuDeviceGetCount(ctypes.byref(n))
    except AttributeError:
        return "the CUDA driver library has no cuInit"
    if rc == 100:                   # CUDA_ERROR_NO_DEVICE
        return "no GPU (the CUDA driver finds none)"
    if rc != 0:
        return f"the CUDA driver does not start (cuInit: error {rc})"
    return None if n.value > 0 else "no GPU (the CUDA driver finds none)"


def resolve(device: str | None = "cpu") -> str:
    """"cpu" or "cuda" for a device name (None: "cpu"); a DeviceError naming
    what is missing when "cuda" cannot run here."""
    d = str(device or "cpu").strip().lower()
    if d not in DEVICES:
        raise DeviceError(f"unknown device '{device}'; known: {', '.join(DEVICES)}")
    if d == "cpu":
        return d
    why = cuda_missing()
    if why is None:
        return "cuda"
    if d == "auto":
        return "cpu"
    raise DeviceError(f"device cuda cannot run here: {why}")
