"""sd_notify over real Unix datagram sockets, as systemd receives it."""

import os
import socket
import threading
import time

import pytest

from edgellm.services.systemd_notify import SystemdNotifier, Watchdog


class NotifySocket:
    """The receiving end systemd would hold: a bound AF_UNIX datagram socket."""

    def __init__(self, address):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(2.0)

    def recv(self) -> str:
        return self.sock.recv(4096).decode()

    def pending(self, wait: float = 0.0) -> list[str]:
        """Every datagram that arrives within `wait` seconds (none blocks past it)."""
        out = []
        self.sock.settimeout(wait if wait > 0 else 0.001)
        try:
            while True:
                out.append(self.sock.recv(4096).decode())
        except (TimeoutError, BlockingIOError, socket.timeout):
            pass
        finally:
            self.sock.settimeout(2.0)
        return out

    def close(self):
        self.sock.close()


@pytest.fixture
def path_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    s = NotifySocket(path)
    yield path, s
    s.close()


def test_messages_arrive_as_single_datagrams_on_a_path_socket(path_socket):
    path, receiver = path_socket
    n = SystemdNotifier.from_environment({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready() is True
    assert n.status("loading model") is True
    assert n.watchdog() is True
    assert n.extend_timeout(30_000_000) is True
    assert n.stopping() is True
    assert [receiver.recv() for _ in range(5)] == [
        "READY=1", "STATUS=loading model", "WATCHDOG=1", "EXTEND_TIMEOUT_USEC=30000000",
        "STOPPING=1"]


def test_ready_with_status_is_one_datagram(path_socket):
    path, receiver = path_socket
    SystemdNotifier(path).ready("serving gemma on socket")
    assert receiver.recv() == "READY=1\nSTATUS=serving gemma on socket"


def test_abstract_socket_name_starting_with_at_is_reached():
    name = f"edgellm-test-{os.getpid()}-{time.monotonic_ns()}"
    receiver = NotifySocket(b"\0" + name.encode())
    try:
        n = SystemdNotifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        assert n.ready() is True
        assert receiver.recv() == "READY=1"
    finally:
        receiver.close()


def test_reloading_carries_the_monotonic_clock_in_microseconds(path_socket):
    path, receiver = path_socket
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    SystemdNotifier(path).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = receiver.recv().split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_status_text_with_newlines_stays_one_assignment(path_socket):
    path, receiver = path_socket
    SystemdNotifier(path).status("queue 3/8\nREADY=1")
    assert receiver.recv() == "STATUS=queue 3/8 READY=1"


def test_without_notify_socket_every_call_is_a_noop():
    n = SystemdNotifier.from_environment({})
    assert not n.enabled
    assert n.watchdog_interval is None
    assert [n.ready(), n.status("x"), n.watchdog(), n.extend_timeout(1), n.reloading(),
            n.stopping()] == [False] * 6
    with n.extending_timeout(1_000_000):
        pass
    assert Watchdog(n, lambda: True).start() is False


def test_a_socket_nobody_listens_on_returns_false_instead_of_raising(tmp_path):
    n = SystemdNotifier(str(tmp_path / "gone.sock"))
    assert n.enabled
    assert n.ready() is False
    assert n.watchdog() is False


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_pid():
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "5000000", "WATCHDOG_PID": str(os.getpid())}
    assert SystemdNotifier.from_environment(env).watchdog_interval == 2.5
    del env["WATCHDOG_PID"]
    assert SystemdNotifier.from_environment(env).watchdog_usec == 5_000_000


def test_watchdog_meant_for_another_pid_is_ignored():
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "5000000",
           "WATCHDOG_PID": str(os.getpid() + 1)}
    n = SystemdNotifier.from_environment(env)
    assert n.watchdog_usec is None and n.watchdog_interval is None


def test_unset_removes_the_variables_so_children_do_not_inherit_them(monkeypatch, tmp_path):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "n.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = SystemdNotifier.from_environment(unset=True)
    assert n.address == str(tmp_path / "n.sock") and n.watchdog_usec == 1_000_000
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(os.environ)


def test_watchdog_pings_only_while_healthy_and_reports_a_stall(path_socket):
    path, receiver = path_socket
    answers = iter([True, True, False, False, True, False])
    exhausted = threading.Event()

    def healthy():
        try:
            return next(answers)
        except StopIteration:
            exhausted.set()
            return False

    wd = Watchdog(SystemdNotifier(path, watchdog_usec=20_000), healthy)
    assert wd.interval == 0.01
    assert wd.start() is True
    assert exhausted.wait(5)
    wd.stop()
    stalled = ("STATUS=engine stalled: no progress; watchdog withheld, systemd restarts the "
               "service after WatchdogSec")
    assert receiver.pending(0.1) == ["WATCHDOG=1", "WATCHDOG=1", stalled, "WATCHDOG=1", stalled]
    assert wd.pings == 3
    assert wd.missed >= 4   # 3 scripted, then False until stop() lands


def test_extending_timeout_repeats_while_the_block_runs_and_stops_after(path_socket):
    path, receiver = path_socket
    n = SystemdNotifier(path)
    with n.extending_timeout(300_000, every=0.05):
        time.sleep(0.32)
    after_block = receiver.pending(0.0)
    assert len(after_block) >= 4
    assert set(after_block) == {"EXTEND_TIMEOUT_USEC=300000"}
    assert receiver.pending(0.2) == []
