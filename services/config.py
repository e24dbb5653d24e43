"""`edgellm serve` configuration: a TOML file, validated into dataclasses.

    [model]                      # optional; no path -> the default model
    path = "/var/lib/edgellm/model.gguf"   # or an Ollama model name: "gemma3:270m"
    n_ctx = 2048
    threads = 4

    [engine]
    queue_size = 8               # waiting requests; one more gets an immediate "busy"
    parallel = 0                 # requests decoded together; 0 = as many as the plan fits
    speculate = true             # verify tokens proposed from the text so far (same output)
    max_prompt_tokens = 2048
    max_tokens = 512             # ceiling for a request's max_tokens
    default_max_tokens = 128
    deadline_s = 120             # default per request
    max_deadline_s = 600
    system_prompt = "You are the lobby kiosk."   # for chat requests without a system message
    stall_timeout_s = 60         # no token for this long while busy -> unhealthy (watchdog)
    node = "pi-lobby"            # name in status and replies; default: the host name

    [mqtt]                       # a table present = adapter on (enabled = false turns it off)
    host = "localhost"
    port = 1883
    protocol = "5"               # or "3.1.1" for brokers without v5
    username = "edgellm"
    password_file = "/etc/edgellm/mqtt.pass"      # or password = "..."
    request_topic = "edgellm/request"
    shared_group = "edgellm"     # subscribe as $share/edgellm/edgellm/request
    home_assistant = true
    [mqtt.tls]
    ca_file = "/etc/ssl/certs/ca.pem"

    [[serial]]                   # one table per port ([serial] for a single one also works)
    port = "/dev/ttyUSB0"
    baud = 115200
    mode = "text"                # or "cobs"
    flow_control = "none"        # rtscts | xonxoff | dsrdtr

    [socket]
    path = "/run/edgellm/edgellm.sock"
    mode = 0o660
    tcp_port = 7000              # optional, bound to tcp_host (127.0.0.1)
    bearer_token_file = "/etc/edgellm/socket.token"   # TCP clients send it first

    [http]
    host = "127.0.0.1"
    port = 8080
    bearer_token_file = "/etc/edgellm/http.token"
    max_body_bytes = 1048576     # a larger body gets 413 before it is read
    idle_timeout_s = 20          # a connection silent this long is closed (unfinished
                                 # headers, a body shorter than its Content-Length, keep-alive)
    max_connections = 64         # beyond it, new connections wait in the listen backlog
    threads = 16                 # requests answered (or waiting for the engine) at once

HTTP or the TCP socket listening beyond loopback without a bearer token is refused unless
its table says `allow_unauthenticated = true`.

Errors are EdgeLLMError with the file, the table and the key, and what is allowed.
"""

from __future__ import annotations

import difflib
import ipaddress
import socket
import sys
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from edgellm.errors import EdgeLLMError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10
    import tomli as tomllib


def _opt(kind, default=None, lo=None, hi=None, choices=None, doc=""):
    """A config field: its TOML type(s), default, bounds or choices."""
    return field(default=default, metadata={"kind": kind, "lo": lo, "hi": hi,
                                            "choices": choices, "doc": doc})


_PORT = dict(lo=1, hi=65535)


@dataclass
class ModelConfig:
    path: str | None = _opt(str)
    n_ctx: int | None = _opt(int, lo=16, hi=1 << 20)
    threads: int | None = _opt(int, lo=1, hi=256)


@dataclass
class EngineConfig:
    queue_size: int = _opt(int, 8, lo=0, hi=10000)
    # requests decoded together, each slot with its own KV cache; 0: the plan chooses (up to 4)
    parallel: int = _opt(int, 0, lo=0, hi=16)
    # propose tokens from the text so far and verify them in one pass (the same output)
    speculate: bool = _opt(bool, True)
    max_prompt_tokens: int = _opt(int, 2048, lo=1, hi=1 << 20)
    max_tokens: int = _opt(int, 512, lo=1, hi=1 << 20)
    default_max_tokens: int = _opt(int, 128, lo=1, hi=1 << 20)
    deadline_s: float = _opt(float, 120.0, lo=0.1, hi=86400)
    max_deadline_s: float = _opt(float, 600.0, lo=0.1, hi=86400)
    system_prompt: str | None = _opt(str)
    stall_timeout_s: float = _opt(float, 60.0, lo=1, hi=86400)
    node: str | None = _opt(str)


@dataclass
class TLSConfig:
    ca_file: str | None = _opt(str)
    cert_file: str | None = _opt(str)
    key_file: str | None = _opt(str)
    insecure: bool = _opt(bool, False, doc="skip hostname verification (testing only)")


@dataclass
class MQTTConfig:
    enabled: bool = _opt(bool, True)
    host: str = _opt(str, "localhost")
    port: int = _opt(int, 1883, **_PORT)
    protocol: str = _opt(str, "5", choices=("5", "3.1.1"))
    client_id: str | None = _opt(str)
    username: str | None = _opt(str)
    password: str | None = _opt(str)
    password_file: str | None = _opt(str)
    keepalive_s: int = _opt(int, 30, lo=5, hi=65535)
    topic_prefix: str = _opt(str, "edgellm")
    request_topic: str | None = _opt(str)        # default <prefix>/request
    shared_group: str | None = _opt(str)
    availability_topic: str | None = _opt(str)   # default <prefix>/<node>/availability
    status_topic: str | None = _opt(str)         # default <prefix>/<node>/status
    default_reply_topic: str | None = _opt(str)  # default <prefix>/reply
    status_interval_s: float = _opt(float, 30.0, lo=0.1, hi=86400)
    session_expiry_s: int = _opt(int, 300, lo=0, hi=2**32 - 1)
    max_request_bytes: int = _opt(int, 65536, lo=64, hi=1 << 28)
    compact: bool = _opt(bool, False, doc="reply in compact packets unless a request says")
    compact_max_packet: int = _opt(int, 256, lo=32, hi=1 << 28)
    dedup_window_s: float = _opt(float, 600.0, lo=0, hi=86400)
    home_assistant: bool = _opt(bool, False)
    discovery_prefix: str = _opt(str, "homeassistant")
    tls: TLSConfig | None = _opt(TLSConfig)


@dataclass
class SerialConfig:
    port: str = _opt(str, MISSING)
    baud: int = _opt(int, 115200, lo=50, hi=20_000_000)
    mode: str = _opt(str, "text", choices=("text", "cobs"))
    flow_control: str = _opt(str, "none", choices=("none", "rtscts", "xonxoff", "dsrdtr"))
    max_frame_bytes: int = _opt(int, 4096, lo=64, hi=1 << 24)
    enabled: bool = _opt(bool, True)


@dataclass
class SocketConfig:
    enabled: bool = _opt(bool, True)
    path: str | None = _opt(str, "/run/edgellm/edgellm.sock", doc='"" for TCP only')
    mode: int = _opt("mode", 0o660)
    group: str | None = _opt(str)
    tcp_host: str = _opt(str, "127.0.0.1")
    tcp_port: int | None = _opt(int, lo=0, hi=65535)
    max_line_bytes: int = _opt(int, 65536, lo=64, hi=1 << 28)
    bearer_token: str | None = _opt(str, doc="TCP connections send it first")
    bearer_token_file: str | None = _opt(str)
    allow_unauthenticated: bool = _opt(bool, False, doc="TCP beyond loopback without a token")


@dataclass
class HTTPConfig:
    enabled: bool = _opt(bool, True)
    host: str = _opt(str, "127.0.0.1")
    port: int = _opt(int, 8080, lo=0, hi=65535)
    bearer_token: str | None = _opt(str)
    bearer_token_file: str | None = _opt(str)
    max_body_bytes: int = _opt(int, 1 << 20, lo=64, hi=1 << 28)
    idle_timeout_s: float = _opt(float, 20.0, lo=1, hi=3600,
                                 doc="close a connection silent this long")
    max_connections: int = _opt(int, 64, lo=1, hi=10000)
    threads: int = _opt(int, 16, lo=1, hi=256, doc="requests answered at once")
    allow_unauthenticated: bool = _opt(bool, False, doc="beyond loopback without a token")


@dataclass
class LogConfig:
    level: str = _opt(str, "info", choices=("debug", "info", "warning", "error"))


@dataclass
class ServeConfig:
    model: ModelConfig = _opt(ModelConfig)
    engine: EngineConfig = _opt(EngineConfig)
    mqtt: MQTTConfig | None = _opt(MQTTConfig)
    serial: list = _opt([SerialConfig])
    socket: SocketConfig | None = _opt(SocketConfig)
    http: HTTPConfig | None = _opt(HTTPConfig)
    log: LogConfig = _opt(LogConfig)
    source: str = "<config>"

    def adapters(self) -> list[str]:
        names = []
        if self.mqtt and self.mqtt.enabled:
            names.append("mqtt")
        names += [f"serial:{s.port}" for s in self.serial if s.enabled]
        if self.socket and self.socket.enabled:
            names.append("socket")
        if self.http and self.http.enabled:
            names.append("http")
        return names


_TOP_LEVEL_ALWAYS = ("model", "engine", "log")


def load_config(path: str | Path) -> ServeConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgeLLMError(f"config file {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise EdgeLLMError(f"config file {path} is not UTF-8: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise EdgeLLMError(f"config file {path} is not valid TOML: {exc}") from None
    return parse_config(data, str(path))


def parse_config(data: dict, source: str = "<config>") -> ServeConfig:
    cfg = _build(ServeConfig, data, source, "", top=True)
    cfg.source = source
    _cross_check(cfg, source)
    return cfg


def _build(cls, table, source: str, where: str, top: bool = False):
    if not isinstance(table, dict):
        raise EdgeLLMError(f"{source}: [{where}] must be a table")
    known = {f.name: f for f in fields(cls) if f.name != "source"}
    for key in table:
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            scope = "at the top level" if top else f"in [{where}]"
            raise EdgeLLMError(f"{source}: unknown key {key!r} {scope}"
                               + (f"; did you mean {hint[0]!r}?" if hint else "")
                               + f" (known: {', '.join(known)})")
    values = {}
    for name, f in known.items():
        meta = f.metadata
        kind = meta["kind"]
        label = f"{where}.{name}" if where else name
        if name not in table:
            if f.default is MISSING:
                raise EdgeLLMError(f"{source}: [{where}] needs {name!r}")
            if isinstance(kind, type) and hasattr(kind, "__dataclass_fields__"):
                values[name] = kind() if (top and name in _TOP_LEVEL_ALWAYS) else None
            elif isinstance(kind, list):
                values[name] = []
            else:
                values[name] = f.default
            continue
        value = table[name]
        if isinstance(kind, list):
            items = value if isinstance(value, list) else [value]
            values[name] = [_build(kind[0], item, source, f"{label}[{i}]" if
                                   isinstance(value, list) else label)
                            for i, item in enumerate(items)]
        elif hasattr(kind, "__dataclass_fields__"):
            values[name] = _build(kind, value, source, label)
        else:
            values[name] = _scalar(value, meta, source, label)
    return cls(**values)


def _scalar(value, meta, source, label):
    kind = meta["kind"]
    if kind == "mode":
        if isinstance(value, str):
            try:
                value = int(value, 8)
            except ValueError:
                raise EdgeLLMError(f"{source}: {label} must be an octal mode like \"0660\" "
                                   f"or 0o660, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
            raise EdgeLLMError(f"{source}: {label} must be a file mode like 0o660")
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
        raise EdgeLLMError(f"{source}: {label} must be {names[kind]}, got {value!r}")
    if meta["choices"] and value not in meta["choices"]:
        raise EdgeLLMError(f"{source}: {label} must be one of "
                           f"{', '.join(map(repr, meta['choices']))}, got {value!r}")
    if meta["lo"] is not None and value < meta["lo"] or \
            meta["hi"] is not None and value > meta["hi"]:
        raise EdgeLLMError(f"{source}: {label} must be between {meta['lo']} and "
                           f"{meta['hi']}, got {value!r}")
    return value


def _cross_check(cfg: ServeConfig, source: str) -> None:
    e = cfg.engine
    if e.default_max_tokens > e.max_tokens:
        raise EdgeLLMError(f"{source}: engine.default_max_tokens ({e.default_max_tokens}) is "
                           f"above engine.max_tokens ({e.max_tokens})")
    if e.deadline_s > e.max_deadline_s:
        raise EdgeLLMError(f"{source}: engine.deadline_s ({e.deadline_s}) is above "
                           f"engine.max_deadline_s ({e.max_deadline_s})")
    if e.node is None:
        e.node = socket.gethostname() or "edgellm"
    m = cfg.mqtt
    if m is not None:
        if m.password and m.password_file:
            raise EdgeLLMError(f"{source}: give mqtt.password or mqtt.password_file, not both")
        if (m.password or m.password_file) and not m.username:
            raise EdgeLLMError(f"{source}: mqtt.password needs mqtt.username")
        if m.password_file:
            m.password = _read_secret(m.password_file, source, "mqtt.password_file")
        for name in ("request_topic", "availability_topic", "status_topic",
                     "default_reply_topic"):
            topic = getattr(m, name)
            if topic is not None and (not topic or "+" in topic or "#" in topic):
                raise EdgeLLMError(f"{source}: mqtt.{name} must be a topic without wildcards, "
                                   f"got {topic!r}")
        if m.shared_group is not None and (not m.shared_group or
                                           any(c in m.shared_group for c in "/+#")):
            raise EdgeLLMError(f"{source}: mqtt.shared_group must be a name without /, + "
                               f"or #, got {m.shared_group!r}")
        node = e.node
        m.request_topic = m.request_topic or f"{m.topic_prefix}/request"
        m.availability_topic = m.availability_topic or f"{m.topic_prefix}/{node}/availability"
        m.status_topic = m.status_topic or f"{m.topic_prefix}/{node}/status"
        m.default_reply_topic = m.default_reply_topic or f"{m.topic_prefix}/reply"
        m.client_id = m.client_id or f"edgellm-{node}"
        if m.tls is not None:
            for name in ("ca_file", "cert_file", "key_file"):
                p = getattr(m.tls, name)
                if p is not None and not Path(p).is_file():
                    raise EdgeLLMError(f"{source}: mqtt.tls.{name} {p!r} does not exist")
            if bool(m.tls.cert_file) != bool(m.tls.key_file):
                raise EdgeLLMError(f"{source}: mqtt.tls needs both cert_file and key_file for "
                                   f"a client certificate")
    ports = [s.port for s in cfg.serial]
    if len(set(ports)) != len(ports):
        raise EdgeLLMError(f"{source}: a serial port is listed twice")
    s = cfg.socket
    if s is not None and s.enabled and not s.path and s.tcp_port is None:
        raise EdgeLLMError(f"{source}: [socket] needs a path or a tcp_port")
    if s is not None and s.path == "":
        s.path = None
    if s is not None:
        _bearer_token(s, source, "socket")
        if s.enabled and s.tcp_port is not None:
            _check_exposure(s, s.tcp_host, source, "socket", "tcp_host")
    h = cfg.http
    if h is not None:
        _bearer_token(h, source, "http")
        if h.enabled:
            _check_exposure(h, h.host, source, "http", "host")
    if not cfg.adapters():
        raise EdgeLLMError(f"{source}: no adapter is enabled; add at least one of [mqtt], "
                           f"[[serial]], [socket] or [http]")


def _bearer_token(table, source: str, name: str) -> None:
    """Fills table.bearer_token from bearer_token_file, if that is the one given."""
    if table.bearer_token and table.bearer_token_file:
        raise EdgeLLMError(f"{source}: give {name}.bearer_token or {name}.bearer_token_file, "
                           f"not both")
    if table.bearer_token_file:
        table.bearer_token = _read_secret(table.bearer_token_file, source,
                                          f"{name}.bearer_token_file")


def is_loopback(host: str) -> bool:
    """True for an address only this machine reaches. A host name other than localhost
    counts as beyond loopback: it may resolve to anything."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_exposure(table, host: str, source: str, name: str, key: str) -> None:
    if is_loopback(host) or table.bearer_token or table.allow_unauthenticated:
        return
    raise EdgeLLMError(f"{source}: {name}.{key} = {host!r} serves beyond loopback without "
                       f"a bearer token; set {name}.bearer_token_file, or "
                       f"{name}.allow_unauthenticated = true to serve the network without one")


def _read_secret(path: str, source: str, label: str) -> str:
    try:
        secret = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise EdgeLLMError(f"{source}: {label} {path!r} cannot be read: {exc}") from None
    if not secret:
        raise EdgeLLMError(f"{source}: {label} {path!r} is empty")
    return secret
