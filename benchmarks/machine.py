"""Describe the machine a benchmark ran on, so reports from a Raspberry Pi and a laptop can be compared."""
from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip().strip("\x00")
    except OSError:
        return ""


def cpu_model() -> str:
    """CPU name from /proc/cpuinfo ("model name" on x86, "Model" on a Pi), else platform.processor()."""
    fields: dict[str, str] = {}
    for line in _read("/proc/cpuinfo").splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    for key in ("model name", "Model", "Hardware", "cpu model"):
        if fields.get(key):
            return fields[key]
    return platform.processor() or "unknown"


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none): a busy machine gives noisy timings."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def cpu_temperature_c() -> float | None:
    """SoC temperature where Linux exposes it (a hot Pi throttles its clock), else None."""
    text = _read("/sys/class/thermal/thermal_zone0/temp")
    return round(int(text) / 1000, 1) if text.isdigit() else None


def describe_machine(runtime: str = "", runtime_version: str = "") -> dict[str, Any]:
    """Architecture, CPU, cores, OS, Python, TFLite runtime and version, date, load and governor."""
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "arch": platform.machine(),
        "cpu_model": cpu_model(),
        "board": _read("/proc/device-tree/model") or None,  # "Raspberry Pi 4 Model B Rev 1.4" on a Pi
        "cores": os.cpu_count(),
        "cpu_governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor") or None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "runtime": runtime,
        "runtime_version": runtime_version,
        "load_average": load_average(),
        "cpu_temp_c": cpu_temperature_c(),
    }
