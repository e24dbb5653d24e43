"""Local socket transport over real Unix and TCP sockets, on the real model."""

import json
import os
import socket
import stat

import pytest
from services_fixtures import make_engine, wait_for  # noqa: F401

from edgellm.services.local_socket import LocalSocketService


class LineClient:
    def __init__(self, sock):
        self.sock = sock
        self.sock.settimeout(120)
        self.buf = b""

    def send(self, obj):
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode() + b"\n"
        self.sock.sendall(data)

    def recv(self) -> dict:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            assert data, "connection closed"
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def until_terminal(self, rid=None):
        out = []
        while True:
            msg = self.recv()
            if rid is not None and msg.get("id") != rid:
                continue
            out.append(msg)
            if msg["type"] != "chunk":
                return out


@pytest.fixture
def service(make_engine, tmp_path):
    engine = make_engine(queue_size=2)
    svc = LocalSocketService(engine, path=str(tmp_path / "e.sock"), tcp_port=0,
                             max_line_bytes=2048)
    svc.start()
    yield svc
    svc.stop_accepting()
    engine.stop()
    svc.close()


def unix_client(svc):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(svc.path)
    return LineClient(s)


def test_socket_file_is_mode_0660(service):
    mode = os.stat(service.path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660


def test_streamed_request_over_unix_socket(service):
    c = unix_client(service)
    c.send({"id": 1, "prompt": "Hello", "max_tokens": 2, "temperature": 0, "stream": True})
    msgs = c.until_terminal()
    final = msgs[-1]
    assert final["type"] == "final" and final["id"] == 1
    assert [m["seq"] for m in msgs[:-1]] == list(range(final["chunks"]))


def test_tcp_localhost_serves_the_same_protocol(service):
    s = socket.create_connection(service.tcp_address)
    c = LineClient(s)
    c.send({"id": "t", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
    assert c.until_terminal()[-1]["type"] == "final"


def test_bad_lines_get_error_codes_and_the_connection_keeps_serving(service):
    c = unix_client(service)
    c.send(b"{not json\n")
    assert c.recv()["code"] == "bad_json"
    c.send(b'{"prompt": "\xff"}\n')
    assert c.recv()["code"] == "bad_utf8"
    c.send(b'{"prompt": "' + b"x" * 3000 + b'"}\n')
    assert c.recv()["code"] == "too_large"
    c.send({"id": "u", "prompt": "a", "colour": "red"})
    assert c.recv() == {"id": "u", "type": "error", "code": "unknown_field",
                        "field": "colour", "message":
                        "unknown field 'colour'; known fields: deadline_s, id, max_tokens, "
                        "messages, min_p, prompt, repeat_last_n, repeat_penalty, schema, "
                        "seed, stop, stream, temperature, top_k, top_p"}
    c.send({"id": "m", "prompt": "a", "max_tokens": -5})
    assert c.recv()["code"] == "bad_value"
    c.send({"id": "ok", "prompt": "Hi", "max_tokens": 1})
    assert c.until_terminal()[-1]["type"] == "final"


def test_cancel_request_stops_a_running_request(service):
    c = unix_client(service)
    c.send({"id": "long", "prompt": "Tell a story.", "max_tokens": 300, "stream": True})
    assert c.recv()["type"] == "chunk"
    c.send({"cancel": "long"})
    msgs = c.until_terminal("long")
    assert msgs[-1]["code"] == "cancelled"
    c.send({"cancel": "nothing"})
    assert c.recv()["code"] == "bad_value"


def test_client_going_away_cancels_its_requests(service):
    engine = service.engine
    c = unix_client(service)
    c.send({"id": "x", "prompt": "Tell a story.", "max_tokens": 300, "stream": True})
    assert c.recv()["type"] == "chunk"
    c.sock.close()
    wait_for(lambda: engine.counts["cancelled"] == 1, 60, what="cancel after disconnect")
    # The engine is free again for everyone else.
    c2 = unix_client(service)
    c2.send({"id": "y", "prompt": "Hi", "max_tokens": 1})
    assert c2.until_terminal()[-1]["type"] == "final"


def read_until_closed(sock) -> list[dict]:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return [json.loads(line) for line in data.splitlines()]
        data += chunk


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_half_closed_client_gets_every_reply_then_the_connection_closes(service, transport):
    # What `echo '{...}' | socat - UNIX-CONNECT:path` does: write, shut the write side, read.
    c = unix_client(service) if transport == "unix" else \
        LineClient(socket.create_connection(service.tcp_address))
    c.send({"id": "s", "prompt": "Hello", "max_tokens": 3, "temperature": 0, "stream": True})
    c.send({"id": "p", "prompt": "Hi", "max_tokens": 2, "temperature": 0})
    c.send(b"{broken\n")
    c.sock.shutdown(socket.SHUT_WR)
    replies = read_until_closed(c.sock)
    terminals = {r["id"]: r for r in replies if r["type"] != "chunk"}
    assert terminals[None]["code"] == "bad_json"
    assert terminals["s"]["type"] == terminals["p"]["type"] == "final"
    chunks = [r for r in replies if r["type"] == "chunk"]
    assert [r["seq"] for r in chunks] == list(range(terminals["s"]["chunks"]))
    assert service.engine.counts["cancelled"] == 0


def test_unix_client_that_closes_its_socket_cancels_its_plain_request(service):
    engine = service.engine
    c = unix_client(service)
    c.send({"id": "x", "prompt": "Tell a story.", "max_tokens": 300})
    wait_for(lambda: engine.status()["state"] == "busy", 60, what="request running")
    c.sock.close()
    wait_for(lambda: engine.counts["cancelled"] == 1, 60, what="cancel after close")


def test_stale_socket_file_is_replaced_and_a_live_one_refused(make_engine, tmp_path):
    engine = make_engine()
    path = tmp_path / "s.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()                   # the file stays, nobody listens
    svc = LocalSocketService(engine, path=str(path))
    svc.start()
    other = LocalSocketService(engine, path=str(path))
    with pytest.raises(OSError, match="another process is serving"):
        other.start()
    svc.stop_accepting()
    svc.close()
    assert not path.exists()


def test_peer_credentials_are_logged(service, caplog):
    caplog.set_level("INFO", logger="edgellm.services.local_socket")
    c = unix_client(service)
    c.send({"prompt": "Hi", "max_tokens": 1})
    c.until_terminal()
    expected = f"connection from pid={os.getpid()} uid={os.getuid()} gid={os.getgid()}"
    assert any(expected in r.getMessage() for r in caplog.records)


TOKEN = "sock-token-1"


@pytest.fixture
def secured(make_engine, tmp_path):
    engine = make_engine()
    svc = LocalSocketService(engine, path=str(tmp_path / "t.sock"), tcp_port=0,
                             bearer_token=TOKEN)
    svc.start()
    yield svc
    svc.stop_accepting()
    engine.stop()
    svc.close()


def test_tcp_client_with_the_token_line_is_served(secured):
    c = LineClient(socket.create_connection(secured.tcp_address))
    c.send({"token": TOKEN})
    c.send({"id": 1, "prompt": "Hi", "max_tokens": 1})
    final = c.until_terminal()[-1]
    assert (final["id"], final["type"]) == (1, "final")


@pytest.mark.parametrize("first", [
    {"token": "wrong"},
    {"id": "r", "prompt": "Hi", "max_tokens": 1},
    {"token": 12345},
    b"not json\n",
    b'{"token": "\\ud800"}\n',
    b"[" * 60000 + b"\n",          # deeper than json can parse
])
def test_tcp_client_without_the_right_token_gets_an_error_and_is_disconnected(secured, first):
    s = socket.create_connection(secured.tcp_address)
    s.settimeout(30)
    LineClient(s).send(first)
    LineClient(s).send({"id": "after", "prompt": "Hi", "max_tokens": 1})
    replies = read_until_closed(s)
    rid = first.get("id") if isinstance(first, dict) else None
    assert replies == [{"id": rid, "type": "error", "code": "unauthorized", "message":
                        'missing or wrong token: the first line on a TCP connection must be '
                        '{"token": "<the [socket] bearer token>"}'}]
    assert secured.engine.counts["accepted"] == 0


def test_unix_socket_needs_no_token(secured):
    c = unix_client(secured)
    c.send({"prompt": "Hi", "max_tokens": 1})
    assert c.until_terminal()[-1]["type"] == "final"
