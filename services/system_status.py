"""Host readings for status topics and /health: memory and CPU temperature."""

from __future__ import annotations

import glob
import os

import psutil

# Sensor names psutil reports for the CPU package on the boards we target, best first.
_CPU_SENSORS = ("cpu_thermal", "cpu-thermal", "coretemp", "k10temp", "zenpower", "soc_thermal",
                "acpitz")


def cpu_temperature_c() -> float | None:
    """The CPU temperature in Celsius, or None where the machine exposes none."""
    try:
        sensors = psutil.sensors_temperatures()
    except (AttributeError, OSError):
        sensors = {}
    for name in _CPU_SENSORS:
        if sensors.get(name):
            return round(sensors[name][0].current, 1)
    for path in sorted(glob.glob("/sys/class/thermal/thermal_zone*/temp")):
        try:
            with open(path) as f:
                return round(int(f.read().strip()) / 1000.0, 1)   # millidegrees
        except (OSError, ValueError):
            continue
    return None


def system_status() -> dict:
    mem = psutil.virtual_memory()
    rss = psutil.Process(os.getpid()).memory_info().rss
    return {
        "mem_rss_mb": round(rss / 2**20, 1),
        "mem_available_mb": round(mem.available / 2**20, 1),
        "mem_total_mb": round(mem.total / 2**20, 1),
        "cpu_temp_c": cpu_temperature_c(),
        "load_1m": round(os.getloadavg()[0], 2),
    }
