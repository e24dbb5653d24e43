"""Local socket transport over real Unix and TCP sockets, on the real model."""

import os
import socket
import stat

import pytest
from services_fixtures import LineClient, make_engine, socket_service, unix_client, wait_for  # noqa: F401

from edgellm.services.local_socket import LocalSocketService


def test_socket_file_is_mode_0660(socket_service):
    mode = os.stat(socket_service.path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660


def test_streamed_request_over_unix_socket(socket_service):
    c = unix_client(socket_service)
    c.send({"id": 1, "prompt": "Hello", "max_tokens": 2, "temperature": 0, "stream": True})
    msgs = c.until_terminal()
    final = msgs[-1]
    assert final["type"] == "final" and final["id"] == 1
    assert [m["seq"] for m in msgs[:-1]] == list(range(final["chunks"]))


def test_tcp_localhost_serves_the_same_protocol(socket_service):
    s = socket.create_connection(socket_service.tcp_address)
    c = LineClient(s)
    c.send({"id": "t", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
    assert c.until_terminal()[-1]["type"] == "final"


def test_bad_lines_get_error_codes_and_the_connection_keeps_serving(socket_service):
    c = unix_client(socket_service)
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


def test_cancel_request_stops_a_running_request(socket_service):
    c = unix_client(socket_service)
    c.send({"id": "long", "prompt": "Tell a story.", "max_tokens": 300, "stream": True})
    assert c.recv()["type"] == "chunk"
    c.send({"cancel": "long"})
    msgs = c.until_terminal("long")
    assert msgs[-1]["code"] == "cancelled"
    c.send({"cancel": "nothing"})
    assert c.recv()["code"] == "bad_value"


def test_client_going_away_cancels_its_requests(socket_service):
    engine = socket_service.engine
    c = unix_client(socket_service)
    c.send({"id": "x", "prompt": "Tell a story.", "max_tokens": 300, "stream": True})
    assert c.recv()["type"] == "chunk"
    c.sock.close()
    wait_for(lambda: engine.counts["cancelled"] == 1, 60, what="cancel after disconnect")
    # The engine is free again for everyone else.
    c2 = unix_client(socket_service)
    c2.send({"id": "y", "prompt": "Hi", "max_tokens": 1})
    assert c2.until_terminal()[-1]["type"] == "final"


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


def test_peer_credentials_are_logged(socket_service, caplog):
    caplog.set_level("INFO", logger="edgellm.services.local_socket")
    c = unix_client(socket_service)
    c.send({"prompt": "Hi", "max_tokens": 1})
    c.until_terminal()
    expected = f"connection from pid={os.getpid()} uid={os.getuid()} gid={os.getgid()}"
    assert any(expected in r.getMessage() for r in caplog.records)
