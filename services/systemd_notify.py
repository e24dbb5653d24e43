"""sd_notify written straight to $NOTIFY_SOCKET, and a watchdog that pings only while healthy.

systemd starts a `Type=notify` service with NOTIFY_SOCKET naming a Unix datagram socket; the
service sends newline-separated KEY=VALUE assignments to it (sd_notify(3)):

    READY=1                  startup finished (model loaded, adapters listening)
    STATUS=text              one line shown by `systemctl status`
    WATCHDOG=1               keep-alive; must arrive within WatchdogSec= or the unit is killed
    EXTEND_TIMEOUT_USEC=n    "still starting/stopping, give me n more microseconds"
    RELOADING=1              reload begun (with MONOTONIC_USEC, as Type=notify-reload wants)
    STOPPING=1               shutdown begun

The protocol is one sendto() per message, so it needs no libsystemd. Every method is a no-op
returning False when NOTIFY_SOCKET is unset (running outside systemd, in a terminal or tests).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import Callable, Iterator, Mapping

log = logging.getLogger(__name__)


def _monotonic_usec() -> int:
    # systemd compares MONOTONIC_USEC with its own CLOCK_MONOTONIC reading.
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _socket_address(value: str) -> str | bytes | None:
    """NOTIFY_SOCKET -> an AF_UNIX address: a path, or an abstract name ('@' -> NUL)."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        # Abstract namespace: the leading NUL is the address; no file exists for it.
        return b"\0" + value[1:].encode()
    return None


class SystemdNotifier:
    """Sends sd_notify messages to the socket systemd gave this process.

    Build it with `SystemdNotifier.from_environment()` (reads NOTIFY_SOCKET, WATCHDOG_USEC and
    WATCHDOG_PID). Thread-safe: each message is a single datagram.
    """

    def __init__(self, address: str | None, watchdog_usec: int | None = None):
        self.address = address
        # Microseconds systemd waits for a WATCHDOG=1; None when the watchdog is off for us.
        self.watchdog_usec = watchdog_usec
        self._target = _socket_address(address) if address else None
        if address and self._target is None:
            # vsock: and other schemes are for VMs; a Pi service never gets one.
            log.warning("NOTIFY_SOCKET=%r is not a Unix socket path or @name; "
                        "not notifying systemd", address)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None,
                         unset: bool = False) -> "SystemdNotifier":
        """Reads NOTIFY_SOCKET / WATCHDOG_USEC / WATCHDOG_PID.

        The watchdog applies to this process only when WATCHDOG_PID is unset or is our pid
        (a child that inherited the variables must not ping for its parent). With
        `unset=True` the three variables are removed from os.environ so child processes
        do not inherit them.
        """
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        watchdog_usec = None
        usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        if usec:
            try:
                value = int(usec)
                mine = pid is None or pid == "" or int(pid) == os.getpid()
            except ValueError:
                log.warning("ignoring malformed WATCHDOG_USEC=%r WATCHDOG_PID=%r", usec, pid)
            else:
                if value > 0 and mine:
                    watchdog_usec = value
        if unset and environ is None:
            for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(key, None)
        return cls(address, watchdog_usec)

    @property
    def enabled(self) -> bool:
        return self._target is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half the timeout, as sd_watchdog_enabled(3) recommends."""
        if self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2e6

    def notify(self, *assignments: str) -> bool:
        """Sends KEY=VALUE lines as one datagram. True if sent, False if off or it failed."""
        if self._target is None:
            return False
        payload = "\n".join(assignments).encode()
        try:
            with self._lock:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(payload, self._target)
        except OSError as exc:
            # systemd gone (reexec, shutdown) or a stale variable: the service itself is fine,
            # so say it once and keep serving.
            if not self._warned:
                log.warning("sd_notify to %s failed: %s", self.address, exc)
                self._warned = True
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        extra = [self._status_line(status)] if status is not None else []
        return self.notify("READY=1", *extra)

    def status(self, text: str) -> bool:
        return self.notify(self._status_line(text))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, usec: int) -> bool:
        """Asks for `usec` more microseconds of start/stop time, counted from now."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(usec)}")

    @contextlib.contextmanager
    def extending_timeout(self, usec: int, every: float | None = None) -> Iterator[None]:
        """Keeps asking for `usec` more start time while the block runs (a model loading
        from a slow SD card): EXTEND_TIMEOUT_USEC at once and then every `every` seconds
        (default a third of `usec`), so the unit's TimeoutStartSec= never expires mid-load
        but a load that hangs for longer than `usec` still times out."""
        if not self.enabled:
            yield
            return
        period = every if every is not None else usec / 3e6
        done = threading.Event()

        def keep_extending() -> None:
            while not done.wait(period):
                self.extend_timeout(usec)

        self.extend_timeout(usec)
        thread = threading.Thread(target=keep_extending, name="sd-extend-timeout", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def reloading(self, status: str | None = None) -> bool:
        extra = [self._status_line(status)] if status is not None else []
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={_monotonic_usec()}", *extra)

    def stopping(self, status: str | None = None) -> bool:
        extra = [self._status_line(status)] if status is not None else []
        return self.notify("STOPPING=1", *extra)

    @staticmethod
    def _status_line(text: str) -> str:
        # A newline would end the assignment and turn the rest into a bogus key.
        return "STATUS=" + " ".join(str(text).splitlines())

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


class Watchdog:
    """Pings WATCHDOG=1 every `notifier.watchdog_interval` seconds while `healthy()` is True.

    `healthy` is the service's own liveness test (the request engine: idle, or made progress
    recently). A wedged engine makes it return False, the pings stop, and systemd restarts
    the unit after WatchdogSec=. Pinging from a thread that merely exists would keep a hung
    service alive forever, which is the failure the watchdog is there to catch.
    """

    def __init__(self, notifier: SystemdNotifier, healthy: Callable[[], bool],
                 interval: float | None = None):
        self.notifier = notifier
        self.healthy = healthy
        self.interval = interval if interval is not None else notifier.watchdog_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pings = 0
        self.missed = 0
        self._stalled = False

    def start(self) -> bool:
        """Starts pinging; False (and nothing started) when systemd set no watchdog."""
        if self.interval is None or not self.notifier.enabled:
            return False
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._thread.start()
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ok = self.healthy()
            except Exception:  # a crashing health check means unhealthy, not a dead thread
                log.exception("watchdog health check failed")
                ok = False
            if ok:
                if self._stalled:
                    log.warning("engine progressing again; WATCHDOG=1 resumed")
                self.notifier.watchdog()
                self.pings += 1
            else:
                if not self._stalled:
                    log.warning("engine made no progress; withholding WATCHDOG=1")
                    # Shown by `systemctl status` until serve's next status line, so whoever
                    # finds the restarted unit sees why.
                    self.notifier.status("engine stalled: no progress; watchdog withheld, "
                                         "systemd restarts the service after WatchdogSec")
                self.missed += 1
            self._stalled = not ok
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
