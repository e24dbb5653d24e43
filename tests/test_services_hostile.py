"""HTTP under hostile and careless clients (issue 16): bad framing, huge bodies, half-open
connections and deeply nested JSON, against a real `serve` process on loopback, with raw
sockets, curl and the official openai and ollama clients."""

import http.client
import json
import selectors
import shutil
import socket
import subprocess
import time

import pytest
from services_fixtures import free_port, serve_process, wait_for

openai = pytest.importorskip("openai")
ollama = pytest.importorskip("ollama")
if shutil.which("curl") is None:
    pytest.skip("curl is not installed (apt-get install curl)", allow_module_level=True)

IDLE_TIMEOUT_S = 2
MAX_BODY = 1 << 20


def proc_status(pid: int, key: str) -> int:
    """A number from /proc/<pid>/status: VmRSS in kB, Threads."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hostile")
    port = free_port()
    proc = serve_process(f"""
[engine]
queue_size = 2
[model]
n_ctx = 512
[http]
port = {port}
max_body_bytes = {MAX_BODY}
idle_timeout_s = {IDLE_TIMEOUT_S}
max_connections = 256
threads = 4
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
    # quarter of it, and its one-second poll).
    deadline = opened + IDLE_TIMEOUT_S * 1.25 + 2
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
    for s in socks:
        s.close()
    sel.close()
    assert not open_, f"{len(open_)} of 200 still open after {closed_after:.1f} s"
    assert proc_status(server.pid, "Threads") <= threads_before


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
