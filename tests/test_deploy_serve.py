"""`edgellm serve` under a stand-in for systemd: the notify protocol over a real socket.

The test plays systemd's part: it binds the NOTIFY_SOCKET datagram socket, sets WATCHDOG_USEC,
starts `edgellm serve` with the default model and a local socket adapter, and checks:

- READY=1 comes only once the model is mapped and the socket answers (STATUS and
  EXTEND_TIMEOUT_USEC before it, no WATCHDOG before it);
- WATCHDOG=1 every WATCHDOG_USEC/2 while the engine is idle or generating;
- a wedged engine stops the pings. The wedge is real: the engine's thread is frozen by ptrace
  at an instant when it is executing inside the C kernels, which is what a kernel that never
  returns (a deadlock, a page fault on a dying SD card) looks like from Python. The rest of the
  process keeps running (cffi released the GIL), so the watchdog thread is alive and must
  decide on its own to withhold WATCHDOG=1. SIGSTOP would freeze the whole process and prove
  nothing. Released, the engine goes on and the pings resume;
- SIGTERM mid-request: STOPPING=1, the request gets a "shutting_down" error reply, exit 0
  within 10 s.
"""

import ctypes
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

WATCHDOG_USEC = 1_000_000          # pings every 0.5 s
STALL_TIMEOUT_S = 1.0

# ptrace(2) requests and the register holding the program counter in NT_PRSTATUS.
PTRACE_GETREGSET, PTRACE_SEIZE, PTRACE_INTERRUPT, PTRACE_DETACH = 0x4204, 0x4206, 0x4207, 17
NT_PRSTATUS, WALL = 1, 0x40000000
PC_INDEX = {"x86_64": 16, "aarch64": 32}   # user_regs_struct.rip / user_pt_regs.pc


class Notifications:
    """systemd's end of NOTIFY_SOCKET: every datagram, when it came, and what was true then."""

    def __init__(self, path: Path, probe):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.probe = probe
        self.messages: list[tuple[float, str, dict]] = []
        self.cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            seen = self.probe()           # checked the moment the message arrives
            with self.cond:
                self.messages.append((time.monotonic(), data.decode(), seen))
                self.cond.notify_all()

    def wait_for(self, predicate, timeout: float, proc=None, after: float = 0.0):
        """The first message (t, text, seen) since `after` matching predicate(text), waiting
        if needed; fails at once if `proc` exits first."""
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for m in self.messages:
                    if m[0] >= after and predicate(m[1]):
                        return m
                left = end - time.monotonic()
                got = [m[1] for m in self.messages]
                if proc is not None and proc.poll() is not None:
                    raise AssertionError(f"the server exited ({proc.returncode}); got {got}")
                if left <= 0:
                    raise AssertionError(f"no matching sd_notify message in {timeout} s; "
                                         f"got {got}")
                self.cond.wait(min(left, 0.5))

    def since(self, t0: float) -> list[str]:
        with self.cond:
            return [text for t, text, _ in self.messages if t >= t0]

    def close(self):
        self._stop = True
        self._thread.join()
        self.sock.close()


class Client:
    """One NDJSON connection to the local socket."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.settimeout(120)
        self.file = self.sock.makefile("r", encoding="utf-8")

    def send(self, obj: dict):
        self.sock.sendall((json.dumps(obj) + "\n").encode())

    def reply(self) -> dict:
        line = self.file.readline()
        assert line, "the server closed the connection"
        return json.loads(line)

    def close(self):
        self.file.close()
        self.sock.close()


class Tracer:
    """Freezes single threads of another process with ptrace (the rest keeps running)."""

    def __init__(self):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.ptrace.restype = ctypes.c_long
        self.libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p,
                                     ctypes.c_void_p]
        self.frozen: list[int] = []

    def _ptrace(self, request, tid, addr=None, data=None) -> int:
        r = self.libc.ptrace(request, tid, addr, data)
        if r == -1:
            raise OSError(ctypes.get_errno(), f"ptrace({request:#x}, {tid})")
        return r

    def stop(self, tid: int) -> bool:
        """Seizes and interrupts one thread; False if it is gone."""
        try:
            self._ptrace(PTRACE_SEIZE, tid)
            self._ptrace(PTRACE_INTERRUPT, tid)
            os.waitpid(tid, WALL)
        except (OSError, ChildProcessError):
            return False
        self.frozen.append(tid)
        return True

    def pc(self, tid: int) -> int:
        regs = (ctypes.c_ulong * 64)()
        iov = (ctypes.c_void_p * 2)(ctypes.cast(regs, ctypes.c_void_p), ctypes.sizeof(regs))
        self._ptrace(PTRACE_GETREGSET, tid, NT_PRSTATUS, ctypes.cast(iov, ctypes.c_void_p))
        return regs[PC_INDEX[platform.machine()]]

    def release(self, tid: int):
        try:
            self._ptrace(PTRACE_DETACH, tid)
        except OSError:
            pass
        self.frozen.remove(tid)

    def release_all(self):
        for tid in list(self.frozen):
            self.release(tid)


def kernel_ranges(pid: int) -> list[tuple[int, int]]:
    """Address ranges of the C kernels' shared objects (edgellm/kernels/_kernels_*.so)."""
    ranges = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6 and "/_kernels_" in parts[5] and "x" in parts[1]:
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            ranges.append((lo, hi))
    return ranges


def freeze_a_thread_inside_the_kernels(tracer: Tracer, pid: int, attempts: int = 400) -> int:
    """Freezes a thread at an instant when it executes kernel code; returns its tid."""
    ranges = kernel_ranges(pid)
    assert ranges, "the C kernels are not mapped into the server"
    for _ in range(attempts):
        for name in os.listdir(f"/proc/{pid}/task"):
            tid = int(name)
            if not tracer.stop(tid):
                continue
            if any(lo <= tracer.pc(tid) < hi for lo, hi in ranges):
                return tid
            tracer.release(tid)
        time.sleep(0.005)
    raise AssertionError("never caught a thread inside the kernels")


def model_is_mapped(pid: int) -> bool:
    try:
        return ".gguf" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


needs_ptrace = pytest.mark.skipif(platform.machine() not in PC_INDEX or sys.platform != "linux",
                                  reason="the ptrace wedge reads x86_64/aarch64 registers")


@needs_ptrace
def test_serve_notifies_ready_after_load_pings_while_healthy_and_stops_cleanly(tmp_path):
    sock_path = tmp_path / "edgellm.sock"
    config = tmp_path / "config.toml"
    config.write_text(f"""
[model]
n_ctx = 2048
threads = 1            # one thread runs the kernels: freezing it wedges the engine

[engine]
max_tokens = 4096
default_max_tokens = 16
deadline_s = 300
max_deadline_s = 600
stall_timeout_s = {STALL_TIMEOUT_S}

[socket]
path = "{sock_path}"
""")
    proc_box: dict = {}

    def probe():
        proc = proc_box.get("proc")
        return {"socket": sock_path.exists(),
                "model_mapped": proc is not None and model_is_mapped(proc.pid)}

    notes = Notifications(tmp_path / "notify.sock", probe)
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify.sock"),
               WATCHDOG_USEC=str(WATCHDOG_USEC), PYTHONUNBUFFERED="1")
    env.pop("WATCHDOG_PID", None)
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "edgellm.cli", "serve",
                             "--config", str(config)], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    proc_box["proc"] = proc
    tracer = Tracer()
    clients = []
    try:
        # -- READY only after the model is loaded and the socket listens ------------------
        t_ready, _, seen = notes.wait_for(lambda m: m.startswith("READY=1"), timeout=180,
                                          proc=proc)
        assert seen == {"socket": True, "model_mapped": True}
        before = [(text, s) for t, text, s in notes.messages if t < t_ready]
        assert any(text == "STATUS=loading model" for text, _ in before)
        assert any(text.startswith("EXTEND_TIMEOUT_USEC=") for text, _ in before)
        assert not any("WATCHDOG=1" in text for text, _ in before)
        assert all(not s["socket"] for text, s in before)   # nothing listened during the load

        quick = Client(sock_path)
        clients.append(quick)
        quick.send({"id": "q", "prompt": "Hello", "max_tokens": 4, "temperature": 0})
        reply = quick.reply()
        assert (reply["id"], reply["type"]) == ("q", "final")

        # -- WATCHDOG=1 every 0.5 s while idle --------------------------------------------
        t0 = time.monotonic()
        time.sleep(2.0)
        assert notes.since(t0).count("WATCHDOG=1") >= 3

        # -- a long streamed request; wedge the engine inside a kernel call -----------------
        stream = Client(sock_path)
        clients.append(stream)
        stream.send({"id": "long", "prompt": "Count from one to one thousand: one, two,",
                     "max_tokens": 4000, "temperature": 0, "stream": True, "deadline_s": 600})
        assert stream.reply()["type"] == "chunk"
        tid = freeze_a_thread_inside_the_kernels(tracer, proc.pid)
        t_frozen = time.monotonic()
        t_stalled, _, _ = notes.wait_for(lambda m: m.startswith("STATUS=engine stalled"),
                                         timeout=STALL_TIMEOUT_S + 3, after=t_frozen)
        time.sleep(3.0)   # six ping intervals
        during = notes.since(t_stalled)
        assert "WATCHDOG=1" not in during, during
        assert proc.poll() is None            # wedged, not dead: systemd would restart it
        assert t_stalled - t_frozen < STALL_TIMEOUT_S + 2

        # -- released, the engine goes on and the pings come back --------------------------
        t_released = time.monotonic()
        tracer.release(tid)
        deadline = time.monotonic() + 5
        while "WATCHDOG=1" not in notes.since(t_released) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "WATCHDOG=1" in notes.since(t_released)

        # -- SIGTERM mid-request ------------------------------------------------------------
        t_term = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        final = stream.reply()
        while final["type"] == "chunk":
            final = stream.reply()
        assert (final["id"], final["type"], final["code"]) == ("long", "error", "shutting_down")
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - t_term < 10
        assert any(text.startswith("STOPPING=1") for text in notes.since(t_term))
    finally:
        tracer.release_all()
        for c in clients:
            c.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notes.close()
        log.close()
        print((tmp_path / "serve.log").read_text()[-3000:])
