"""edgellm.devices: device profiles, detection of the running device, and the memory planner."""

from edgellm.devices.detect import DeviceInfo, detect_device
from edgellm.devices.planner import (UNLIMITED, MemoryBudgetError, Plan, format_size, parse_size,
                                     plan_memory)
from edgellm.devices.profiles import PROFILES, CoreCluster, DeviceProfile, get_profile

__all__ = ["DeviceInfo", "detect_device", "Plan", "plan_memory", "parse_size", "format_size",
           "MemoryBudgetError", "UNLIMITED", "PROFILES", "DeviceProfile", "CoreCluster",
           "get_profile"]
