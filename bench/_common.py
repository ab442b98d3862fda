"""What every benchmark records first: the machine and the versions that produced its numbers."""

from __future__ import annotations

import os
import platform
import sys


def machine_info(*libraries: str, device: str = "cpu") -> dict:
    """Platform, Python, CPU count, the version of each named library, torch's thread count and the
    GPU when ``device`` is ``"cuda"``."""
    import importlib

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count()}
    for name in libraries:
        info[name] = importlib.import_module(name).__version__
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info["torch_threads"] = torch.get_num_threads()
        if device == "cuda":
            info["gpu"] = torch.cuda.get_device_name(0)
    return info
