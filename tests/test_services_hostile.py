"""Services under hostile and careless clients (issue 16), one case per numbered item, each
with real clients we did not write: raw sockets, curl, socat, nc, the mosquitto clients,
paho, and the official openai and ollama clients. Every case gets a clear error on its own
channel, and a good request is answered after it. Traffic stays on loopback.

1. HTTP body with no limit (Content-Length: -1 read to the end of the stream):
   test_bad_framing_is_refused_and_the_connection_closed,
   test_oversized_headers_get_431_and_the_connection_closed,
   test_fifty_megabyte_body_is_refused_without_the_server_growing
2. HTTP with no read or idle timeout (half-sent requests held a thread each; a body
   shorter than its Content-Length hung):
   test_half_open_connections_are_closed_within_the_idle_timeout
3. The socket one-liner of deploy/config.example.toml got no reply (socat and nc half-close
   when their input ends, and the server cancelled the job):
   test_socat_one_liner_from_the_config_example_gets_its_final_reply,
   test_socat_and_nc_get_an_error_then_their_final_reply_after_their_input_ends
   (socat, nc -N, nc -q),
   test_half_closed_client_gets_every_reply_then_the_connection_closes,
   test_unix_client_that_closes_its_socket_cancels_its_plain_request
4. Deeply nested JSON over HTTP gave a 500 with a traceback:
   test_deeply_nested_json_gets_bad_json
5. An MQTT v5 response topic with + or # was not checked; a 3.1.1 reply_to with one was
   swapped for the shared reply topic:
   test_mosquitto_pub_wildcard_response_topic_gets_bad_reply_topic_on_the_reply_topic,
   test_mosquitto_pub_v311_wildcard_reply_to_gets_bad_reply_topic_on_the_reply_topic,
   test_v5_wildcard_response_topic_is_refused_on_the_default_reply_topic,
   test_v311_bad_reply_to_is_refused_on_the_default_reply_topic,
   test_bad_json_with_a_wildcard_response_topic_is_answered_on_the_default_topic
6. Compact mode with a reply topic too long for the packet: silence, or a "cancelled"
   itself over 256 bytes:
   test_mosquitto_pub_compact_reply_topic_too_long_gets_a_short_error_on_the_reply_topic,
   test_compact_reply_topic_too_long_for_the_packet_is_refused_in_a_short_error,
   test_compact_reply_topic_refusal_is_logged_with_the_longest_topic_that_fits,
   test_compact_reply_topic_that_just_fits_is_served
7. Broker unreachable at startup: serve exited 1, taking HTTP, socket and serial down:
   test_serve_without_its_broker_serves_the_rest_and_answers_mqtt_once_it_appears
8. A listener beyond loopback without a token was accepted silently; the TCP socket had no
   authentication:
   test_network_listener_without_a_token_is_refused_by_the_config,
   test_loopback_a_token_or_an_explicit_opt_out_may_listen,
   test_serve_refuses_an_unauthenticated_network_listener_in_one_line,
   test_socat_token_one_liner_from_the_config_example_is_served,
   test_socat_with_a_wrong_token_gets_unauthorized_and_is_disconnected,
   test_tcp_client_with_the_token_line_is_served,
   test_tcp_client_without_the_right_token_gets_an_error_and_is_disconnected,
   test_unix_socket_needs_no_token
9. Ollama format "json" accepted any JSON value; num_predict -1 gave 128 tokens:
   test_ollama_json_format_allows_only_an_object,
   test_ollama_negative_num_predict_generates_until_the_context_is_full

After items 1, 2 and 4, test_a_good_request_is_answered_after_all_of_it has the same HTTP
server answer the openai and ollama clients and curl.

Items 1, 2, 3 (socat, nc), 4 and 8 (socat) run against one real `serve` process; the others
against the adapters in this process where a test reads the engine's counts or the log, or
their own `serve` process (7).
"""

import argparse
import http.client
import json
import queue
import selectors
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest
from services_fixtures import (MOSQUITTO, REPO, REQ, Broker, LineClient, MQTTProbe,  # noqa: F401
                               NotifySocket, broker, free_port, http_service, line_request,
                               make_engine, make_service, packet_size, probe,
                               serve_process, socket_service, unix_client, wait_for)

from edgellm.errors import EdgeLLMError
from edgellm.services.config import parse_config
from edgellm.services.http_api import HTTPService
from edgellm.services.local_socket import LocalSocketService
from edgellm.services.serve import add_serve_arguments, run_serve

openai = pytest.importorskip("openai")
ollama = pytest.importorskip("ollama")


def needs(tool: str, package: str):
    return pytest.mark.skipif(shutil.which(tool) is None,
                              reason=f"{tool} is not installed (apt-get install {package})")


needs_curl = needs("curl", "curl")
needs_socat = needs("socat", "socat")
needs_mosquitto_clients = needs("mosquitto_pub", "mosquitto-clients")

IDLE_TIMEOUT_S = 2
MAX_BODY = 1 << 20
SOCKET_TOKEN = "hostile-socket-token"


def proc_status(pid: int, key: str) -> int:
    """A number from /proc/<pid>/status: VmRSS in kB, Threads."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One `serve` process: HTTP, the Unix socket and a TCP socket that takes a token."""
    workdir = tmp_path_factory.mktemp("hostile")
    port, socket_port = free_port(), free_port()
    token_file = workdir / "socket.token"
    token_file.write_text(SOCKET_TOKEN + "\n")
    proc = serve_process(f"""
[engine]
queue_size = 2
default_max_tokens = 8
[model]
n_ctx = 512
[http]
port = {port}
max_body_bytes = {MAX_BODY}
idle_timeout_s = {IDLE_TIMEOUT_S}
max_connections = 256
threads = 4
[socket]
path = "{workdir / 'e.sock'}"
tcp_port = {socket_port}
bearer_token_file = "{token_file}"
""", workdir)

    def healthy():
        assert proc.poll() is None, proc.log_path.read_text()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        except OSError:
            return False

    wait_for(healthy, 120, 0.2, "serve answering /health")
    proc.port = port
    proc.socket_path = str(workdir / "e.sock")
    proc.socket_port = socket_port
    proc.token_file = str(token_file)
    yield proc
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Sends `data` on a fresh connection; what came back, and whether the server closed
    the connection within `timeout`."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    got = b""
    closed = False
    try:
        s.sendall(data)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                closed = True
                break
            except socket.timeout:
                break
            if not chunk:
                closed = True
                break
            got += chunk
    finally:
        s.close()
    return got, closed


def status_and_json(reply: bytes) -> tuple[int, dict]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


@pytest.mark.parametrize("framing, expected", [
    (b"Content-Length: -1\r\n\r\n{}", 400),
    (b"Content-Length: 1e3\r\n\r\n{}", 400),
    (b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400),
    (b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400),
    (b"No colon here\r\nContent-Length: 2\r\n\r\n{}", 400),
    # RFC 9112 6.1: a transfer coding the server does not implement is a 501.
    (b"Transfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 501),
], ids=["negative-length", "float-length", "two-lengths", "bad-chunk-size",
        "header-without-colon", "unknown-coding"])
def test_bad_framing_is_refused_and_the_connection_closed(server, framing, expected):
    reply, closed = exchange(server.port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                             + framing)
    status, body = status_and_json(reply)
    assert status == expected and body["error"]["code"] == "bad_frame", reply
    assert closed


def test_oversized_headers_get_431_and_the_connection_closed(server):
    reply, closed = exchange(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Junk: "
                             + b"a" * 20000 + b"\r\n\r\n")
    status, body = status_and_json(reply)
    assert status == 431 and body["code"] == "too_large" and closed


@needs_curl
def test_fifty_megabyte_body_is_refused_without_the_server_growing(server, tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"{not json " * (5 << 20))          # 50 MB, malformed
    rss_before = proc_status(server.pid, "VmRSS")

    # A raw client announcing the length: 413 before the body is read, then closed.
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
              b"Content-Type: application/json\r\nContent-Length: 52428800\r\n\r\n")
    sent = 0
    try:
        with open(junk, "rb") as f:
            while sent < 50 << 20:            # until the server stops taking it
                sent += s.send(f.read(1 << 20))
    except OSError:
        pass
    reply = b""
    try:
        while chunk := s.recv(65536):
            reply += chunk
    except OSError:
        pass
    s.close()
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert sent < 50 << 20

    # curl, with a Content-Length and then chunked (no length up front: waitress counts).
    url = f"http://127.0.0.1:{server.port}/api/generate"
    for extra in ([], ["-H", "Transfer-Encoding: chunked"]):
        out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                              "--max-time", "20", "-H", "Content-Type: application/json",
                              *extra, "--data-binary", f"@{junk}", url],
                             capture_output=True, text=True, timeout=30)
        assert out.stdout in ("413", "400"), (extra, out.stdout, out.stderr)

    rss_after = proc_status(server.pid, "VmRSS")
    print(f"\n50 MB malformed body, raw and curl twice: server VmRSS {rss_before} -> {rss_after} kB")
    assert rss_after - rss_before < 20 * 1024, (rss_before, rss_after)


def test_half_open_connections_are_closed_within_the_idle_timeout(server):
    threads_before = proc_status(server.pid, "Threads")
    sel = selectors.DefaultSelector()
    socks = []
    for i in range(200):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        if i % 2:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
        else:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100"
                      b"\r\n\r\n{\"prompt\":")
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        socks.append(s)
    opened = time.monotonic()

    # A well-behaved client is answered meanwhile, and the server has no more threads.
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="none",
                           max_retries=0, timeout=10)
    r = client.completions.create(model="m", prompt="The sky is", max_tokens=2)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert proc_status(server.pid, "Threads") <= threads_before

    # Each one is closed within the idle timeout (plus waitress's check interval, a
    # quarter of it, and its one-second poll). On a loaded machine the completion above may
    # itself outlast that: the closes are then read in one sweep of a second.
    deadline = max(opened + IDLE_TIMEOUT_S * 1.25 + 2, time.monotonic() + 1)
    open_ = set(socks)
    while open_ and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.2):
            try:
                data = key.fileobj.recv(4096)
            except ConnectionResetError:
                data = b""
            if not data:
                sel.unregister(key.fileobj)
                open_.discard(key.fileobj)
    closed_after = time.monotonic() - opened
    print(f"\n200 half-open connections: {200 - len(open_)} closed {closed_after:.1f} s after opening "
          f"(idle timeout {IDLE_TIMEOUT_S} s); threads {threads_before} before, "
          f"{proc_status(server.pid, 'Threads')} after")
    for s in socks:
        s.close()
    sel.close()
    assert not open_, f"{len(open_)} of 200 still open after {closed_after:.1f} s"
    assert proc_status(server.pid, "Threads") <= threads_before


@needs_curl
@pytest.mark.parametrize("path, code_of", [
    ("/v1/chat/completions", lambda body: body["error"]["code"]),
    ("/api/chat", lambda body: body["code"]),
])
def test_deeply_nested_json_gets_bad_json(server, path, code_of):
    depth = 100000
    body = b'{"model": "m", "messages": ' + b"[" * depth + b"]" * depth + b"}"
    out = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", "--max-time", "20",
                          "-H", "Content-Type: application/json", "--data-binary", "@-",
                          f"http://127.0.0.1:{server.port}{path}"],
                         input=body, capture_output=True, timeout=30)
    reply, _, status = out.stdout.rpartition(b"\n")
    assert status == b"400" and code_of(json.loads(reply)) == "bad_json", out
    assert b"Traceback" not in server.log_path.read_bytes()


@needs_curl
def test_a_good_request_is_answered_after_all_of_it(server):
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="none",
                           max_retries=0, timeout=30)
    r = client.chat.completions.create(model="m", max_tokens=2, temperature=0,
                                       messages=[{"role": "user", "content": "Hi"}])
    assert r.choices[0].message.role == "assistant" and r.usage.completion_tokens >= 1
    name = client.models.list().data[0].id
    parts = list(ollama.Client(host=f"http://127.0.0.1:{server.port}", timeout=30).generate(
        model=name, prompt="Hi", stream=True, options={"num_predict": 2}))
    assert parts[-1].done
    # A chunked body (no Content-Length) is framed by waitress and answered like any other.
    out = subprocess.run(["curl", "-sS", "--max-time", "20", "-H", "Transfer-Encoding: chunked",
                          "--data-binary", json.dumps({"model": name, "prompt": "Hi",
                                                       "stream": False,
                                                       "options": {"num_predict": 2}}),
                          f"http://127.0.0.1:{server.port}/api/generate"],
                         capture_output=True, timeout=30)
    assert json.loads(out.stdout)["done"] is True, out
    log = server.log_path.read_text()
    assert "Traceback" not in log and "internal" not in log


# Items 3 and 8 (the socket): socat and nc as deploy/config.example.toml shows them.

def documented_one_liner(marker: str) -> str:
    """The shell command in deploy/config.example.toml's comments that contains `marker`,
    its continuation lines joined."""
    lines = [line.lstrip("#").strip()
             for line in (REPO / "deploy" / "config.example.toml").read_text().splitlines()
             if line.startswith("#")]
    for i, line in enumerate(lines):
        if marker in line:
            command = line
            while command.endswith("\\"):
                i += 1
                command = command[:-1] + lines[i]
            return command
    raise AssertionError(f"deploy/config.example.toml shows no command with {marker!r}")


def run_client(command: str, stdin: bytes | None = None) -> list[dict]:
    """Runs a shell pipeline of real clients; its output lines, parsed."""
    out = subprocess.run(command, shell=True, input=stdin, capture_output=True, timeout=60)
    assert out.returncode == 0, (command, out.stdout, out.stderr)
    return [json.loads(line) for line in out.stdout.splitlines()]


@needs_socat
def test_socat_one_liner_from_the_config_example_gets_its_final_reply(server):
    command = documented_one_liner("UNIX-CONNECT:")
    assert command.startswith("echo '{") and "socat -t 120 - UNIX-CONNECT:" in command
    replies = run_client(command.replace("/run/edgellm/edgellm.sock", server.socket_path))
    final = replies[-1]
    assert final["type"] == "final" and final["stats"]["completion_tokens"] >= 1, replies


def openbsd_nc() -> bool:
    if shutil.which("nc") is None:
        return False
    out = subprocess.run(["nc", "-h"], capture_output=True, text=True, timeout=10)
    return "OpenBSD netcat" in out.stdout + out.stderr


@pytest.mark.parametrize("client", [
    "socat -t 120 - UNIX-CONNECT:{path}",
    "nc -U -N {path}",             # shuts its write side at the end of its input
    # Debian's nc -q does not shut its write side (only -N does), so the server keeps the
    # connection open for more lines, and nc reads for 3 s after its input ends, then quits.
    "nc -U -q 3 {path}",
], ids=["socat", "nc-N", "nc-q"])
def test_socat_and_nc_get_an_error_then_their_final_reply_after_their_input_ends(
        server, client):
    tool = client.split()[0]
    if tool == "socat" and shutil.which("socat") is None:
        pytest.skip("socat is not installed (apt-get install socat)")
    if tool == "nc" and not openbsd_nc():
        pytest.skip("nc is not OpenBSD netcat (apt-get install netcat-openbsd): -U, -N and "
                    "-q differ between netcats")
    lines = (b"{broken\n" + json.dumps({"id": "ok", "prompt": "Hi", "max_tokens": 4,
                                         "stream": True}).encode() + b"\n")
    replies = run_client(client.format(path=server.socket_path), stdin=lines)
    assert replies[0]["type"] == "error" and replies[0]["code"] == "bad_json", replies
    final = replies[-1]
    assert (final["id"], final["type"]) == ("ok", "final"), replies
    assert [r["seq"] for r in replies[1:-1]] == list(range(final["chunks"]))


@needs_socat
def test_socat_token_one_liner_from_the_config_example_is_served(server):
    command = documented_one_liner("(echo '{\"token\"")
    assert "socat -t 120 - TCP:127.0.0.1:7000" in command, command
    command = command.replace("/etc/edgellm/socket.token", server.token_file).replace(
        "TCP:127.0.0.1:7000", f"TCP:127.0.0.1:{server.socket_port}")
    replies = run_client(command)
    assert replies[-1]["type"] == "final", replies


@needs_socat
def test_socat_with_a_wrong_token_gets_unauthorized_and_is_disconnected(server):
    lines = b'{"token": "guess"}\n{"id": "r", "prompt": "Hi", "max_tokens": 1}\n'
    replies = run_client(f"socat -t 120 - TCP:127.0.0.1:{server.socket_port}", stdin=lines)
    assert replies == [{"id": None, "type": "error", "code": "unauthorized", "message":
                        'missing or wrong token: the first line on a TCP connection must be '
                        '{"token": "<the [socket] bearer token>"}'}]
    # The right token on the next connection is served.
    lines = (json.dumps({"token": SOCKET_TOKEN}) + "\n"
             + json.dumps({"id": "r", "prompt": "Hi", "max_tokens": 1}) + "\n").encode()
    replies = run_client(f"socat -t 120 - TCP:127.0.0.1:{server.socket_port}", stdin=lines)
    assert (replies[-1]["id"], replies[-1]["type"]) == ("r", "final"), replies


# Items 3 and 8 on the adapter in this process, where a test reads the engine's counts.



def read_until_closed(sock) -> list[dict]:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return [json.loads(line) for line in data.splitlines()]
        data += chunk


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_half_closed_client_gets_every_reply_then_the_connection_closes(socket_service, transport):
    # What `echo '{...}' | socat - UNIX-CONNECT:path` does: write, shut the write side, read.
    c = unix_client(socket_service) if transport == "unix" else \
        LineClient(socket.create_connection(socket_service.tcp_address))
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
    assert socket_service.engine.counts["cancelled"] == 0


def test_unix_client_that_closes_its_socket_cancels_its_plain_request(socket_service):
    engine = socket_service.engine
    c = unix_client(socket_service)
    c.send({"id": "x", "prompt": "Tell a story.", "max_tokens": 300})
    wait_for(lambda: engine.status()["state"] == "busy", 60, what="request running")
    c.sock.close()
    wait_for(lambda: engine.counts["cancelled"] == 1, 60, what="cancel after close")


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


# Items 5 and 6: MQTT reply topics that cannot carry the replies. The service answers them
# with bad_reply_topic on its default reply topic, edgellm/reply, where services/mqtt.py's
# docstring tells a client that may get its reply topic wrong to listen too.

REPLY = "edgellm/reply"




class MosquittoSub:
    """mosquitto_sub on one topic, subscribed (its SUBACK seen) when this returns. Each
    message is printed as MSG <tab> topic <tab> correlation data <tab> payload."""

    def __init__(self, port: int, topic: str, version: str = "mqttv5"):
        self.proc = subprocess.Popen(
            # stdbuf: mosquitto_sub's debug lines (the SUBACK) would wait in a pipe's buffer.
            ["stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port),
             "-V", version, "-q", "1", "-d", "-W", "60", "-t", topic,
             "-F", "MSG\\t%t\\t%D\\t%p"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: queue.Queue = queue.Queue()
        self.debug: list[bytes] = []
        threading.Thread(target=self._read, daemon=True).start()
        end = time.monotonic() + 10
        while not any(b"received SUBACK" in line for line in self.debug):
            assert time.monotonic() < end, self.debug
            time.sleep(0.02)

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith(b"MSG\t"):
                self.lines.put(line.rstrip(b"\n"))
            else:
                self.debug.append(line)

    def get(self, timeout: float = 30.0) -> tuple[str, bytes, bytes]:
        """The next message: (topic, correlation data, payload)."""
        _, topic, correlation, payload = self.lines.get(timeout=timeout).split(b"\t", 3)
        return topic.decode(), correlation, payload

    def until_final(self, timeout: float = 60.0) -> list[bytes]:
        """Payloads up to and including the first final or error (compact or not)."""
        out = []
        end = time.monotonic() + timeout
        while True:
            out.append(self.get(max(0.1, end - time.monotonic()))[2])
            msg = json.loads(out[-1])
            if "f" in msg or "e" in msg or msg.get("type") in ("final", "error"):
                return out

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def mosquitto_sub(broker):
    subs = []

    def make(topic, version="mqttv5"):
        sub = MosquittoSub(broker.port, topic, version)
        subs.append(sub)
        return sub

    yield make
    for sub in subs:
        sub.close()


def mosquitto_pub(port: int, payload: dict, version: str = "mqttv5",
                  properties: dict | None = None) -> None:
    args = []
    for name, value in (properties or {}).items():
        args += ["-D", "publish", name, value]
    out = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-V", version,
                          "-q", "1", "-t", REQ, *args, "-m", json.dumps(payload)],
                         capture_output=True, timeout=20)
    assert out.returncode == 0, out


@needs_mosquitto_clients
@pytest.mark.parametrize("bad", ["a/#", "a/+/inbox"])
def test_mosquitto_pub_wildcard_response_topic_gets_bad_reply_topic_on_the_reply_topic(
        broker, make_service, mosquitto_sub, bad):
    svc = make_service()
    errors = mosquitto_sub(REPLY)
    mosquitto_pub(broker.port, {"id": "w", "prompt": "Hi", "max_tokens": 1},
                  properties={"response-topic": bad, "correlation-data": "corr-w"})
    topic, correlation, payload = errors.get()
    assert (topic, correlation) == (REPLY, b"corr-w")
    assert json.loads(payload) == {
        "id": "w", "type": "error", "code": "bad_reply_topic", "field": "response_topic",
        "message": f"the response_topic {bad!r} has a wildcard (+ or #); replies need one "
                   f"plain topic; this error goes to edgellm/reply"}
    assert svc.engine.counts["accepted"] == 0
    # A plain response topic is answered.
    inbox = mosquitto_sub("a/inbox")
    mosquitto_pub(broker.port, {"id": "ok", "prompt": "Hi", "max_tokens": 1},
                  properties={"response-topic": "a/inbox", "correlation-data": "corr-ok"})
    topic, correlation, payload = inbox.get(60)
    assert (topic, correlation) == ("a/inbox", b"corr-ok")
    assert (json.loads(payload)["id"], json.loads(payload)["type"]) == ("ok", "final")
    assert errors.lines.empty()


@needs_mosquitto_clients
def test_mosquitto_pub_v311_wildcard_reply_to_gets_bad_reply_topic_on_the_reply_topic(
        broker, make_service, mosquitto_sub):
    svc = make_service()
    errors = mosquitto_sub(REPLY, "mqttv311")
    mosquitto_pub(broker.port, {"id": 7, "reply_to": "dev/#", "prompt": "Hi",
                                "max_tokens": 1}, "mqttv311")
    topic, _, payload = errors.get()
    assert topic == REPLY
    assert json.loads(payload) == {
        "id": 7, "type": "error", "code": "bad_reply_topic", "field": "reply_to",
        "message": "the reply_to 'dev/#' has a wildcard (+ or #); replies need one plain "
                   "topic; this error goes to edgellm/reply"}
    assert svc.engine.counts["accepted"] == 0
    rx = mosquitto_sub("dev/7/rx", "mqttv311")
    mosquitto_pub(broker.port, {"id": 8, "reply_to": "dev/7/rx", "prompt": "Hi",
                                "max_tokens": 1}, "mqttv311")
    reply = json.loads(rx.get(60)[2])
    assert (reply["id"], reply["type"]) == (8, "final")
    assert errors.lines.empty()


@pytest.mark.parametrize("bad", ["client/#", "client/+/inbox", "#"])
def test_v5_wildcard_response_topic_is_refused_on_the_default_reply_topic(make_service, probe,
                                                                          bad):
    svc = make_service()
    p = probe()
    p.subscribe("edgellm/reply")
    p.publish(REQ, {"id": "w", "prompt": "Hi", "max_tokens": 1}, response_topic=bad,
              correlation=b"corr-w")
    msg = p.get(30)
    assert msg.topic == "edgellm/reply" and msg.properties.CorrelationData == b"corr-w"
    assert json.loads(msg.payload) == {
        "id": "w", "type": "error", "code": "bad_reply_topic", "field": "response_topic",
        "message": f"the response_topic {bad!r} has a wildcard (+ or #); replies need one "
                   f"plain topic; this error goes to edgellm/reply"}
    time.sleep(0.5)
    assert p.messages.empty() and svc.engine.counts["accepted"] == 0


@pytest.mark.parametrize("bad, problem", [
    ("dev/+/rx", "has a wildcard (+ or #); replies need one plain topic"),
    ("dev/#", "has a wildcard (+ or #); replies need one plain topic"),
    ("", "is empty"),
    ("dev/\u0000", "contains a NUL character"),
])
def test_v311_bad_reply_to_is_refused_on_the_default_reply_topic(make_service, probe, bad,
                                                                 problem):
    svc = make_service()
    p = probe("3.1.1")
    p.subscribe("edgellm/reply")
    p.publish(REQ, {"id": 7, "reply_to": bad, "prompt": "Hi", "max_tokens": 1})
    reply = p.get_json(30)
    assert reply == {"id": 7, "type": "error", "code": "bad_reply_topic", "field": "reply_to",
                     "message": f"the reply_to {bad!r} {problem}; this error goes to "
                                f"edgellm/reply"}
    time.sleep(0.5)
    assert p.messages.empty() and svc.engine.counts["accepted"] == 0


def test_bad_json_with_a_wildcard_response_topic_is_answered_on_the_default_topic(
        make_service, probe):
    make_service()
    p = probe()
    p.subscribe("edgellm/reply")
    p.publish(REQ, b"{oops", response_topic="c/#", correlation=b"j")
    msg = p.get(30)
    assert (msg.topic, msg.properties.CorrelationData) == ("edgellm/reply", b"j")
    assert json.loads(msg.payload)["code"] == "bad_json"


# For id "c" and max_tokens 2 the widest compact packet is the final
# {"i":"c","s":2,"f":"length","n":2} (34 bytes): 1 + 2 + 2 + 2 + 215 + 34 = 256 bytes of packet
# with a 215-byte topic.
FITS = "d/" + "y" * 213



@needs_mosquitto_clients
def test_mosquitto_pub_compact_reply_topic_too_long_gets_a_short_error_on_the_reply_topic(
        broker, make_service, mosquitto_sub):
    svc = make_service()
    errors = mosquitto_sub(REPLY, "mqttv311")
    too_long = FITS + "y"
    mosquitto_pub(broker.port, {"id": "c", "reply_to": too_long, "compact": True,
                                "prompt": "Hi", "max_tokens": 2}, "mqttv311")
    topic, _, payload = errors.get()
    assert topic == REPLY and packet_size(topic, payload) <= 256
    assert json.loads(payload) == {"i": "c", "e": "bad_reply_topic"}
    assert svc.engine.counts["accepted"] == 0
    # The longest topic that fits is served, every packet within 256 bytes.
    fits = mosquitto_sub(FITS, "mqttv311")
    mosquitto_pub(broker.port, {"id": "c", "reply_to": FITS, "compact": True,
                                "prompt": "Hi", "max_tokens": 2}, "mqttv311")
    payloads = fits.until_final()
    assert all(packet_size(FITS, payload) <= 256 for payload in payloads)
    packets = [json.loads(payload) for payload in payloads]
    assert "f" in packets[-1] and all(p["i"] == "c" and "e" not in p for p in packets)
    assert errors.lines.empty()


@pytest.mark.parametrize("stream", [False, True])
def test_compact_reply_topic_too_long_for_the_packet_is_refused_in_a_short_error(
        make_service, probe, stream):
    svc = make_service()
    p = probe("3.1.1")
    p.subscribe("edgellm/reply")
    too_long = FITS + "y"
    p.subscribe(too_long)
    p.publish(REQ, {"id": "c", "reply_to": too_long, "compact": True, "prompt": "Hi",
                    "max_tokens": 2, "stream": stream})
    msg = p.get(30)
    assert msg.topic == "edgellm/reply"
    assert packet_size(msg.topic, msg.payload) <= 256
    assert json.loads(msg.payload) == {"i": "c", "e": "bad_reply_topic"}
    time.sleep(0.5)
    assert p.messages.empty() and svc.engine.counts["accepted"] == 0


def test_compact_reply_topic_refusal_is_logged_with_the_longest_topic_that_fits(
        make_service, probe, caplog):
    caplog.set_level("INFO", logger="edgellm.services.mqtt")
    make_service(compact=True)
    p = probe()
    p.subscribe("edgellm/reply")
    too_long = FITS + "y"
    p.publish(REQ, {"id": "c", "prompt": "Hi", "max_tokens": 2}, response_topic=too_long,
              correlation=b"k")
    msg = p.get(30)
    assert (msg.topic, msg.properties.CorrelationData) == ("edgellm/reply", b"k")
    assert json.loads(msg.payload) == {"i": "c", "e": "bad_reply_topic"}
    assert any(r.getMessage().endswith(
        "is 216 bytes: with this id, compact packets of 256 bytes leave room for a reply "
        "topic of at most 215 bytes; this error goes to edgellm/reply")
        for r in caplog.records)


def test_compact_reply_topic_that_just_fits_is_served(make_service, probe):
    make_service()
    p = probe("3.1.1")
    assert len(FITS) == 215
    p.subscribe(FITS)
    p.publish(REQ, {"id": "c", "reply_to": FITS, "compact": True, "prompt": "Hi",
                    "max_tokens": 2})
    packets = []
    while not packets or "f" not in packets[-1]:
        msg = p.get(120)
        assert msg.topic == FITS and packet_size(msg.topic, msg.payload) <= 256
        packets.append(json.loads(msg.payload))
        assert "e" not in packets[-1]


# Item 7: serve without its broker.



def get_health(port) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/health")
    resp = conn.getresponse()
    assert resp.status == 200
    return json.loads(resp.read())


def test_serve_without_its_broker_serves_the_rest_and_answers_mqtt_once_it_appears(tmp_path):
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    (tmp_path / "broker").mkdir()
    late = Broker(tmp_path / "broker")          # its port is chosen; nothing listens yet
    notify = NotifySocket(tmp_path / "notify")
    http_port = free_port()
    proc = serve_process(f"""
[engine]
node = "s3"
queue_size = 2
[model]
n_ctx = 512
[socket]
path = "{tmp_path / 's3.sock'}"
[http]
port = {http_port}
[mqtt]
host = "127.0.0.1"
port = {late.port}
status_interval_s = 1
""", tmp_path, {"NOTIFY_SOCKET": notify.path})
    down = f"broker 127.0.0.1:{late.port} is unreachable; reconnecting"
    probe = None
    try:
        ready = notify.wait("READY=1")
        assert f"mqtt down: {down}" in ready
        health = get_health(http_port)
        assert health["status"] == "degraded"
        assert health["adapters"] == {"mqtt": down, "socket": "ok", "http": "ok"}
        s, f = line_request(str(tmp_path / "s3.sock"), {"prompt": "Hi", "max_tokens": 1})
        assert json.loads(f.readline())["type"] == "final"
        s.close()

        late.start()
        probe = MQTTProbe(late.port)
        probe.subscribe("edgellm/s3/availability")
        assert probe.get(30).payload == b"online"      # reconnect backoff is at most 5 s
        probe.subscribe("c/late")
        probe.publish("edgellm/request", {"id": "l", "prompt": "Hi", "max_tokens": 1},
                      response_topic="c/late")
        reply = probe.get_json(60)
        assert (reply["id"], reply["type"]) == ("l", "final")
        health = get_health(http_port)
        assert health["status"] == "ok"
        assert health["adapters"] == {"mqtt": "ok", "socket": "ok", "http": "ok"}
        probe.subscribe("edgellm/s3/status")
        status = probe.get_json(10)
        assert status["adapters"] == {"mqtt": "ok", "socket": "ok", "http": "ok"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        if probe is not None:
            probe.close()
        notify.close()
        late.stop()
        late.log.close()


# Item 8: listeners beyond loopback need a token (the socket's token is checked with socat
# above and with raw sockets below).

@pytest.mark.parametrize("data, message", [
    ({"http": {"host": "0.0.0.0"}}, "http.host = '0.0.0.0' serves beyond loopback without a "
     "bearer token; set http.bearer_token_file, or http.allow_unauthenticated = true to "
     "serve the network without one"),
    ({"http": {"host": "pi-lobby.local"}}, "http.host = 'pi-lobby.local' serves beyond"),
    ({"socket": {"tcp_port": 7000, "tcp_host": "::"}}, "socket.tcp_host = '::' serves "
     "beyond loopback without a bearer token; set socket.bearer_token_file, or "
     "socket.allow_unauthenticated = true"),
    ({"socket": {"tcp_port": 1, "bearer_token": "a", "bearer_token_file": "b"}},
     "give socket.bearer_token or socket.bearer_token_file, not both"),
])
def test_network_listener_without_a_token_is_refused_by_the_config(data, message):
    with pytest.raises(EdgeLLMError) as info:
        parse_config(data, "cfg.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("cfg.toml: ")


@pytest.mark.parametrize("table", [
    {"http": {"host": "127.0.0.1"}},
    {"http": {"host": "::1"}},
    {"http": {"host": "localhost"}},
    {"http": {"host": "0.0.0.0", "bearer_token": "t"}},
    {"http": {"host": "0.0.0.0", "allow_unauthenticated": True}},
    {"http": {"host": "0.0.0.0", "enabled": False}, "socket": {"path": "/tmp/a.sock"}},
    {"socket": {"tcp_port": 7000, "tcp_host": "192.168.1.5", "bearer_token": "t"}},
    {"socket": {"tcp_port": 7000, "tcp_host": "0.0.0.0", "allow_unauthenticated": True}},
    {"socket": {"path": "/tmp/a.sock", "tcp_host": "0.0.0.0"}},   # no TCP listener
])
def test_loopback_a_token_or_an_explicit_opt_out_may_listen(table):
    parse_config(table, "cfg.toml")


def run_serve_cli(argv):
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))


def test_serve_refuses_an_unauthenticated_network_listener_in_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[http]\nhost = "0.0.0.0"\n')
    assert run_serve_cli(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err == (f"edgellm serve: {cfg}: http.host = '0.0.0.0' serves beyond loopback "
                   f"without a bearer token; set http.bearer_token_file, or "
                   f"http.allow_unauthenticated = true to serve the network without one\n")


# Item 9: the Ollama API's format "json" and num_predict -1, through the ollama client.



def base(svc):
    return f"http://127.0.0.1:{svc.address[1]}"


def test_ollama_json_format_allows_only_an_object(http_service):
    # Unconstrained JSON, this prompt gets a bare number; Ollama's "json" means an object.
    client = ollama.Client(host=base(http_service), timeout=120)
    for prompt in ("Reply with the number -1 and nothing else.",
                   "What is minus one? Answer in JSON."):
        r = client.generate(model=http_service.model_name(), prompt=prompt, format="json",
                            options={"num_predict": 16, "temperature": 0})
        if r.done_reason == "stop":
            assert isinstance(json.loads(r.response), dict), r.response
        else:
            assert r.response.lstrip().startswith("{"), r.response


@pytest.mark.parametrize("num_predict", [-1, -2])
def test_ollama_negative_num_predict_generates_until_the_context_is_full(
        make_engine, default_model, num_predict):
    from edgellm.runtime.generation import load_model

    # A 64-token context, and a prompt that keeps the model counting past it.
    engine = make_engine(model=load_model(default_model.path, n_ctx=64))
    svc = HTTPService(engine, port=0)
    svc.start()
    try:
        client = ollama.Client(host=base(svc), timeout=120)
        r = client.generate(model=svc.model_name(), prompt="Count from 1 to 100: 1, 2, 3,",
                            raw=True, options={"num_predict": num_predict, "temperature": 0})
        assert r.done_reason == "length"
        assert r.prompt_eval_count + r.eval_count == 64
        assert r.eval_count > engine.limits.default_max_tokens
    finally:
        svc.stop_accepting()
        svc.close()
