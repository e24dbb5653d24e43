"""deploy/edgellm.service as systemd reads it: `systemd-analyze verify` and `security`.

`systemd-analyze verify` exits 0 even for unknown keys and bad values (it only prints them),
so any output at all is a failure here. It also insists that ExecStart= names an existing
executable, and the unit's /opt/edgellm/venv/bin/edgellm exists only after install.sh: the
test verifies a copy whose ExecStart path is rewritten to an executable in a temp dir, every
other line unchanged. (test_deploy_install.py verifies the unit install.sh writes, whose
ExecStart is a real venv.)
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "deploy" / "edgellm.service"
EXEC = "/opt/edgellm/venv/bin/edgellm"

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze missing: apt-get install systemd")


def analyze(*args) -> subprocess.CompletedProcess:
    # SYSTEMD_LOG_COLOR/pager off: plain text whatever the terminal.
    env = dict(os.environ, SYSTEMD_COLORS="0", SYSTEMD_PAGER="", SYSTEMD_LOG_COLOR="0")
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True,
                          env=env, timeout=60)


def unit_with_existing_exec(directory: Path) -> Path:
    """A copy of the unit, in `directory`, whose ExecStart binary exists."""
    exe = directory / "bin" / "edgellm"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    text = UNIT.read_text()
    assert text.count(f"ExecStart={EXEC} ") == 1
    copy = directory / "edgellm.service"
    copy.write_text(text.replace(f"ExecStart={EXEC} ", f"ExecStart={exe} "))
    return copy


def exposure(output: str) -> float:
    m = re.search(r"Overall exposure level for edgellm\.service: (\d+\.\d+)", output)
    assert m, output
    return float(m.group(1))


def unit_settings(text: str) -> dict[str, list[str]]:
    """[Section] Key -> values, in order (keys like DeviceAllow= repeat)."""
    out: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key}", []).append(value)
    return out


@needs_systemd_analyze
def test_unit_verifies_with_no_output(tmp_path):
    result = analyze("verify", str(unit_with_existing_exec(tmp_path)))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@needs_systemd_analyze
def test_verify_would_report_a_bad_key(tmp_path):
    # The check above means something only if verify does print problems in this environment.
    unit = unit_with_existing_exec(tmp_path)
    unit.write_text(unit.read_text().replace("[Service]\n", "[Service]\nWatchdogSecs=60\n"))
    result = analyze("verify", str(unit))
    assert "Unknown key 'WatchdogSecs'" in result.stdout + result.stderr


@needs_systemd_analyze
def test_security_exposure_is_at_most_3(tmp_path):
    result = analyze("security", "--offline=true", str(UNIT))
    assert result.returncode == 0, result.stderr
    assert exposure(result.stdout) <= 3.0, result.stdout


@needs_systemd_analyze
def test_security_exposure_check_sees_a_weakened_unit(tmp_path):
    # Dropping the sandbox must raise the score past the bar: the parse reads the real number.
    text = UNIT.read_text()
    weak = "\n".join(line for line in text.splitlines()
                     if not line.startswith(("Protect", "Restrict", "SystemCall", "Capability",
                                             "Private", "NoNewPrivileges", "User=", "Group=",
                                             "MemoryDeny", "Lock", "Device")))
    copy = tmp_path / "edgellm.service"
    copy.write_text(weak)
    result = analyze("security", "--offline=true", str(copy))
    assert exposure(result.stdout) > 3.0


def test_unit_is_notify_with_watchdog_restart_and_sandbox():
    s = unit_settings(UNIT.read_text())
    assert s["Service.Type"] == ["notify"]
    assert s["Service.NotifyAccess"] == ["main"]
    assert s["Service.WatchdogSec"] == ["60s"]
    assert s["Service.Restart"] == ["on-failure"]
    assert s["Service.TimeoutStartSec"] == ["90s"]
    assert s["Service.ExecStart"] == [f"{EXEC} serve --config /etc/edgellm/config.toml"]
    assert s["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["Service.ProtectSystem"] == ["strict"]
    assert s["Service.PrivateTmp"] == ["yes"]
    assert s["Service.NoNewPrivileges"] == ["yes"]
    assert s["Service.SupplementaryGroups"] == ["dialout"]
    assert s["Service.StateDirectory"] == ["edgellm"]
    assert s["Service.ConfigurationDirectory"] == ["edgellm"]
    assert s["Service.RuntimeDirectory"] == ["edgellm"]
    # The model cache the service reads is the StateDirectory install.sh fills.
    assert s["Service.Environment"][0] == "EDGELLM_CACHE=/var/lib/edgellm"
    assert s["Service.MemoryHigh"] == ["768M"] and s["Service.MemoryMax"] == ["1G"]


MDWE_RUN = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit(77)    # kernel older than 6.3: no PR_SET_MDWE
from edgellm.cli.main import main
sys.exit(main(["run", "--temp", "0", "-n", "4", "The capital of France is"]))
"""


def test_generation_runs_under_memory_deny_write_execute():
    # The unit sets MemoryDenyWriteExecute=yes; the kernel's PR_SET_MDWE enforces the same
    # rule (no mapping may become writable and executable) on this process, so anything in
    # the runtime that needed W+X memory (a JIT, ctypes/cffi callbacks) fails here.
    result = subprocess.run([sys.executable, "-c", MDWE_RUN], capture_output=True, text=True,
                            timeout=600)
    if result.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
