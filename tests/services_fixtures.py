"""Real components for the services tests: a Mosquitto broker, MQTT clients, engines, a
systemd notify socket, a client of the local socket's line protocol, and the adapters
(MQTT, local socket, HTTP) started in the test process on the session's model.

Import the fixtures into a test module with `from services_fixtures import *`.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from edgellm.services.config import parse_config
from edgellm.services.http_api import HTTPService
from edgellm.services.local_socket import LocalSocketService
from edgellm.services.mqtt import MQTTService

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto"
                                          if os.path.exists("/usr/sbin/mosquitto") else None)
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A Mosquitto on a free loopback port with persistence, so it can restart in place."""

    def __init__(self, workdir: Path, passwords: dict | None = None, tls: dict | None = None):
        self.workdir = workdir
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.proc: subprocess.Popen | None = None
        conf = [
            # Started as root, mosquitto would switch to its own user and lose access to
            # the test's private directory.
            *(["user root"] if os.geteuid() == 0 else []),
            "per_listener_settings true",
            f"listener {self.port} 127.0.0.1",
        ]
        if passwords:
            pwfile = workdir / "passwd"
            pwfile.write_text("")
            for user, pw in passwords.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pwfile), user, pw], check=True,
                               capture_output=True)
            os.chmod(pwfile, 0o600)
            conf += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            conf += ["allow_anonymous true"]
        if tls:
            conf += [f"listener {self.tls_port} 127.0.0.1", "allow_anonymous true",
                     f"cafile {tls['ca']}", f"certfile {tls['cert']}", f"keyfile {tls['key']}"]
        conf += [
            "persistence true",
            f"persistence_location {workdir}/",
            "autosave_interval 1",
            "max_queued_messages 100000",
            "max_inflight_messages 100",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text("\n".join(conf) + "\n")
        self.log = open(workdir / "mosquitto.log", "ab")

    def start(self) -> "Broker":
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=self.log,
                                     stderr=self.log)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {(self.workdir / 'mosquitto.log').read_text()}")
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)   # saves the persistence database
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, down_s: float = 0.5) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


def packet_size(topic: str, payload: bytes) -> int:
    # MQTT 3.1.1 PUBLISH at QoS 1: fixed header (1 + remaining-length bytes), topic length
    # (2) + topic, packet id (2), payload. Replies here stay under 16384 remaining bytes.
    remaining = 2 + len(topic.encode()) + 2 + len(payload)
    assert remaining < 16384
    return 1 + (1 if remaining < 128 else 2) + remaining


class NotifySocket:
    """What systemd listens on: a datagram socket collecting sd_notify messages."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: queue.Queue = queue.Queue()
        self.all: list[str] = []
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self._stop:
            try:
                data = self.sock.recv(4096).decode()
            except (socket.timeout, OSError):
                continue
            self.all.append(data)
            self.messages.put(data)

    def wait(self, key: str, timeout: float = 120.0) -> str:
        end = time.monotonic() + timeout
        while True:
            data = self.messages.get(timeout=max(0.01, end - time.monotonic()))
            if any(line.startswith(key) for line in data.splitlines()):
                return data

    def close(self):
        self._stop = True
        self.sock.close()


class LineClient:
    """A client of the local socket's line protocol: a JSON object a line each way."""

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


def make_tls_files(workdir: Path) -> dict:
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=workdir)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=edgellm-test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost")
    (workdir / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    return {"ca": str(workdir / "ca.crt"), "cert": str(workdir / "server.crt"),
            "key": str(workdir / "server.key")}


@pytest.fixture
def broker(tmp_path):
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    b = Broker(tmp_path).start()
    yield b
    b.stop()
    b.log.close()


class MQTTProbe:
    """A test-side MQTT client that records every message, by topic, with its properties."""

    def __init__(self, port: int, protocol: str = "5", client_id: str | None = None,
                 persistent: bool = False, **connect_kw):
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self._props = (Properties, PacketTypes)
        self.v5 = protocol == "5"
        self.client_id = client_id or f"probe-{uuid.uuid4().hex[:8]}"
        kw = {}
        if not self.v5:
            kw["clean_session"] = not persistent
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                  protocol=MQTTProtocolVersion.MQTTv5 if self.v5
                                  else MQTTProtocolVersion.MQTTv311, **kw)
        self.messages: queue.Queue = queue.Queue()
        self.subscriptions: list[str] = []
        self.connected = threading.Event()
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_connect = self._on_connect
        self.client.reconnect_delay_set(0.2, 1)
        self.client.max_queued_messages_set(0)
        if connect_kw.get("username"):
            self.client.username_pw_set(connect_kw["username"], connect_kw.get("password"))
        if connect_kw.get("ca"):
            self.client.tls_set(ca_certs=connect_kw["ca"])
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            if persistent:
                props.SessionExpiryInterval = 300
            self.client.connect("127.0.0.1", port, 30, clean_start=not persistent,
                                properties=props)
        else:
            self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()
        assert self.connected.wait(10), "probe could not connect"

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        for topic in self.subscriptions:
            client.subscribe(topic, qos=1)
        self.connected.set()

    def subscribe(self, topic: str) -> None:
        self.subscriptions.append(topic)
        result, mid = self.client.subscribe(topic, qos=1)
        assert result == 0
        time.sleep(0.2)   # let the SUBACK land before anything is published

    def publish(self, topic: str, payload, response_topic: str | None = None,
                correlation: bytes | None = None, qos: int = 1, retain: bool = False):
        props = None
        if self.v5 and (response_topic or correlation):
            Properties, PacketTypes = self._props
            props = Properties(PacketTypes.PUBLISH)
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation is not None:
                props.CorrelationData = correlation
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        return self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)

    def get(self, timeout: float = 30.0):
        return self.messages.get(timeout=timeout)

    def get_json(self, timeout: float = 30.0) -> dict:
        return json.loads(self.get(timeout).payload)

    def until_terminal(self, timeout: float = 60.0) -> list[dict]:
        """Reply dicts up to and including the first final or error."""
        out = []
        end = time.monotonic() + timeout
        while True:
            msg = json.loads(self.get(max(0.1, end - time.monotonic())).payload)
            out.append(msg)
            if msg.get("type") in ("final", "error"):
                return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def make_engine(default_model):
    """Builds started RequestEngines on the session's real model (or on `model`: an engine owns
    its model, so engines that run at once need one each) and stops them after."""
    from edgellm.services.engine import RequestEngine
    from edgellm.services.protocol import Limits

    engines = []

    def make(limits: Limits | None = None, model=None, **kw):
        engine = RequestEngine(model or default_model, limits or Limits(default_max_tokens=4),
                               **kw).start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.stop()


def serve_process(config_text: str, workdir: Path, extra_env: dict | None = None
                  ) -> subprocess.Popen:
    """Starts `python -m edgellm.services.serve --config` in a child process."""
    cfg = workdir / f"serve-{uuid.uuid4().hex[:6]}.toml"
    cfg.write_text(config_text)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(extra_env or {}))
    log = open(workdir / (cfg.stem + ".log"), "wb")
    proc = subprocess.Popen([sys.executable, "-m", "edgellm.services.serve", "--config",
                             str(cfg)], stdout=log, stderr=subprocess.STDOUT, env=env)
    proc.log_path = workdir / (cfg.stem + ".log")
    return proc


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = ""):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what or predicate}")


# ---- adapters in the test process, on the session's model (engines from make_engine) ----

REQ = "edgellm/request"


def mqtt_cfg(port, node="t1", **kw):
    table = {"host": "127.0.0.1", "port": port, "status_interval_s": 0.5, **kw}
    return parse_config({"engine": {"node": node}, "mqtt": table}).mqtt


@pytest.fixture
def make_service(broker, make_engine):
    """Builds started MQTTServices (on the broker fixture unless `port`) and stops them after."""
    services = []

    def make(engine_kw=None, port=None, **cfg_kw):
        engine = make_engine(node="t1", **(engine_kw or {}))
        svc = MQTTService(engine, mqtt_cfg(port or broker.port, **cfg_kw))
        svc.start()
        services.append(svc)
        return svc

    yield make
    for svc in services:
        svc.stop_accepting()
        svc.engine.stop()
        svc.close()


@pytest.fixture
def probe(broker):
    """Makes MQTTProbes on the broker fixture and closes them after."""
    probes = []

    def make(protocol="5", **kw):
        p = MQTTProbe(broker.port, protocol, **kw)
        probes.append(p)
        return p

    yield make
    for p in probes:
        p.close()


@pytest.fixture
def socket_service(make_engine, tmp_path):
    """A LocalSocketService on a Unix socket and a loopback TCP port."""
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


@pytest.fixture
def http_service(make_engine):
    """An HTTPService on a loopback port, with a 4 KiB body limit."""
    engine = make_engine(queue_size=2)
    svc = HTTPService(engine, host="127.0.0.1", port=0, max_body_bytes=4096)
    svc.start()
    yield svc
    svc.stop_accepting()
    engine.stop()
    svc.close()


def line_request(path, obj):
    """One request line on a Unix socket: (the socket, its reply lines)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.settimeout(120)
    s.sendall(json.dumps(obj).encode() + b"\n")
    return s, s.makefile("rb")
