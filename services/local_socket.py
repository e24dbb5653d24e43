"""Local socket transport: a Unix domain socket (and optionally localhost TCP), NDJSON.

Each connection is a StreamSession: one JSON request per line in, chunk/final/error lines
out (see protocol.py). Requests on one connection may overlap; replies carry their id.

A client that shuts down its write side (a half-close, as `echo '{...}' | socat -t 60 -
UNIX-CONNECT:...` does) still gets every reply: after the end of its input the connection
stays open until each accepted request has its final or error, then the service closes it.
Only a client that is gone cancels its requests: a failed or reset write, or a hang-up seen
on the socket (a Unix peer that closed its socket; a TCP peer shows it is gone only when a
write is reset, so its plain, unstreamed request runs to the end).

With a bearer token configured, the first line on a TCP connection must be
`{"token": "<token>"}` (no reply when it is right). A missing or wrong token gets one error
line, code "unauthorized", and the connection is closed. The Unix socket needs no token: its
file mode and group decide who may connect.

The Unix socket is created with mode 0660 (owner and group; systemd's unit puts kiosk users
in the service's group) and every connection's peer credentials (SO_PEERCRED: pid, uid, gid)
are logged, which is the audit trail for who asked what on a shared device.
"""

from __future__ import annotations

import grp
import hmac
import json
import logging
import os
import select
import socket
import stat
import struct
import threading
import time

from edgellm.services.engine import RequestEngine
from edgellm.services.protocol import ServiceError, encode_line, request_id_of
from edgellm.services.stream_session import StreamSession

log = logging.getLogger(__name__)

TOKEN_TIMEOUT_S = 10.0       # for a TCP client's first line, when a token is required


def peer_credentials(sock: socket.socket) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of a Unix socket's peer, or None where SO_PEERCRED is unavailable."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)


class LocalSocketService:
    name = "socket"

    def __init__(self, engine: RequestEngine, path: str | None = "/run/edgellm/edgellm.sock",
                 mode: int = 0o660, group: str | None = None, tcp_host: str = "127.0.0.1",
                 tcp_port: int | None = None, max_line_bytes: int = 65536,
                 bearer_token: str | None = None):
        self.engine = engine
        self.path = path
        self.mode = mode
        self.group = group
        self.tcp_host = tcp_host
        self.tcp_port = tcp_port
        self.max_line_bytes = max_line_bytes
        self.bearer_token = bearer_token
        self._listeners: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._sessions: set[StreamSession] = set()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = False
        self.tcp_address: tuple[str, int] | None = None

    def start(self) -> None:
        if self.path:
            self._listeners.append(self._bind_unix())
        if self.tcp_port is not None:
            tcp = socket.create_server((self.tcp_host, self.tcp_port), reuse_port=False)
            self.tcp_address = tcp.getsockname()[:2]
            self._listeners.append(tcp)
            log.info("socket: listening on tcp %s:%d", *self.tcp_address)
        for lsock in self._listeners:
            t = threading.Thread(target=self._accept_loop, args=(lsock,), daemon=True,
                                 name=f"accept-{lsock.family.name}")
            t.start()
            self._threads.append(t)

    def _bind_unix(self) -> socket.socket:
        path = self.path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if os.path.exists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise OSError(f"{path} exists and is not a socket; remove it or pick another "
                              f"[socket] path")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)   # stale: left by a process that died
            else:
                probe.close()
                raise OSError(f"another process is serving on {path}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bound and listening under a temporary name, then renamed into place: a client that
        # sees the path can connect (no refusal between bind and listen). Bound under a
        # restrictive umask so the socket is never reachable by "other", even for the instant
        # before chmod (umask is process-wide; this runs at startup only).
        tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}")
        if len(os.fsencode(tmp)) > 107:   # sun_path's limit: bind the path itself
            tmp = path
        old = os.umask(0o177)
        try:
            sock.bind(tmp)
        finally:
            os.umask(old)
        if self.group:
            os.chown(tmp, -1, grp.getgrnam(self.group).gr_gid)
        os.chmod(tmp, self.mode)
        sock.listen(64)
        if tmp != path:
            os.rename(tmp, path)
        log.info("socket: listening on %s (mode %o)", path, self.mode)
        return sock

    def _accept_loop(self, lsock: socket.socket) -> None:
        while not self._stopping:
            try:
                conn, addr = lsock.accept()
            except OSError:
                return
            if conn.family == socket.AF_UNIX:
                creds = peer_credentials(conn)
                who = (f"pid={creds[0]} uid={creds[1]} gid={creds[2]}" if creds
                       else "unix peer")
            else:
                who = f"tcp {addr[0]}:{addr[1]}"
            log.info("socket: connection from %s", who)
            t = threading.Thread(target=self._serve, args=(conn, who), daemon=True,
                                 name=f"conn-{who}")
            t.start()

    def _serve(self, conn: socket.socket, who: str) -> None:
        first = b""
        if self.bearer_token is not None and conn.family != socket.AF_UNIX:
            first = self._authenticate(conn, who)
            if first is None:
                return
        session = StreamSession(self.engine, conn.sendall, name=who, framing="text",
                                max_frame=self.max_line_bytes,
                                on_dead=lambda: _shutdown(conn))
        with self._lock:
            self._sessions.add(session)
            self._conns.add(conn)
        try:
            data = first
            while True:
                if data:
                    session.feed(data)
                data = conn.recv(65536)
                if not data:
                    break
            # End of input, which is not the end of the client: answer what it asked.
            session.end_input()
            _wait_drained_or_hung_up(conn, session)
        except (OSError, ValueError):  # ValueError: close() closed the socket meanwhile (fd -1)
            pass
        finally:
            if not self._stopping:
                log.info("socket: %s disconnected", who)
                session.close()
                with self._lock:
                    self._sessions.discard(session)
                    self._conns.discard(conn)
                conn.close()

    def _authenticate(self, conn: socket.socket, who: str) -> bytes | None:
        """Reads the token line. Returns the bytes after it, or None when the client is
        refused (told why, and disconnected) or left."""
        buf = b""
        conn.settimeout(TOKEN_TIMEOUT_S)
        try:
            while b"\n" not in buf and len(buf) <= self.max_line_bytes:
                data = conn.recv(65536)
                if not data:
                    break
                buf += data
        except OSError:
            buf = b""   # silent or gone: refused below, if anyone is still there
        conn.settimeout(None)
        line, newline, rest = buf.partition(b"\n")
        try:
            obj = json.loads(line) if newline else None
        except (ValueError, RecursionError):
            obj = None
        token = obj.get("token") if isinstance(obj, dict) else None
        if isinstance(token, str) and hmac.compare_digest(
                token.encode("utf-8", "surrogatepass"), self.bearer_token.encode()):
            return rest
        log.warning("socket: %s refused: missing or wrong token", who)
        err = ServiceError("unauthorized", 'missing or wrong token: the first line on a TCP '
                           'connection must be {"token": "<the [socket] bearer token>"}')
        try:
            conn.sendall(encode_line(err.reply(request_id_of(obj))))
            # Read what the client still sends before closing, so the close does not reset
            # the connection and discard the error line before the client reads it.
            conn.shutdown(socket.SHUT_WR)
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                conn.settimeout(max(0.01, end - time.monotonic()))
                if not conn.recv(65536):
                    break
        except OSError:
            pass
        conn.close()
        return None

    def stop_accepting(self) -> None:
        self._stopping = True
        for lsock in self._listeners:
            _shutdown(lsock)
            lsock.close()
        if self.path and os.path.exists(self.path):
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def close(self, timeout: float = 2.0) -> None:
        self._stopping = True
        with self._lock:
            sessions, conns = list(self._sessions), list(self._conns)
        for s in sessions:
            s.finish(timeout / max(1, len(sessions)))
        for c in conns:
            _shutdown(c)
            c.close()


def _wait_drained_or_hung_up(conn: socket.socket, session: StreamSession) -> None:
    """Waits until the session's last reply is written, or the peer hangs up (POLLHUP: both
    directions are shut, as when a Unix peer closes its socket; POLLERR: a reset)."""
    poller = select.poll()
    poller.register(conn, 0)      # POLLHUP and POLLERR are always reported
    while not session.drained.wait(0.1):
        if poller.poll(0):
            return


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
