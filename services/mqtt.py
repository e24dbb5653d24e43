"""MQTT transport (paho-mqtt 2.x, CallbackAPIVersion.VERSION2).

Requests arrive on `request_topic` (through `$share/<group>/<topic>` when `shared_group` is
set, so several boards split one request stream: the broker load-balances). Replies:

- MQTT v5 request: published to its Response Topic with its Correlation Data echoed.
- MQTT v3.1.1 request (no properties): the payload names the reply topic, `"reply_to"`, and
  the `"id"` echoed in every reply; without reply_to, replies go to `default_reply_topic`.
- A reply topic that cannot carry the replies (empty, a wildcard `+` or `#`, a NUL, over
  MQTT's 65535 bytes, or in compact mode too long to leave room for text in a packet) is
  refused before the request runs: a "bad_reply_topic" error, with the request's id and
  (v5) its Correlation Data, goes to `default_reply_topic`. A client that may get its reply
  topic wrong subscribes there too.
- Compact mode (`"compact": true` in a request, or `compact = true` in the config) is for
  ESP32/Arduino PubSubClient, whose default buffer is 256 bytes for a whole packet: replies
  are short-keyed and every packet, header and topic included, fits `compact_max_packet`:
      {"i": id, "s": seq, "t": "text"}            chunks (the text, split to fit)
      {"i": id, "s": n_chunks, "f": "stop", "n": completion_tokens}   final
      {"i": id, "e": "busy"}                      error
- Otherwise: the chunk/final/error messages of protocol.py, one chunk per token if
  "stream" is true, and a final with stats.

Everything is QoS 1. A request delivered twice (QoS 1 redelivery, or a publisher resending
after a broker restart) is recognised by (reply topic, correlation data or id, payload) and
answered once, whatever the answer was (a "busy" too): to retry, send a new id. Requests
with neither correlation data nor an id cannot be de-duplicated.
The session is persistent (clean_start false, session expiry `session_expiry_s`) and
subscriptions are (re)made in on_connect, so after a broker restart the engine resubscribes
and the broker hands over what was queued; paho resends unacknowledged replies.

A broker that is down or unreachable, at startup or later, does not stop the service: paho
keeps reconnecting in the background (backoff from 1 s doubling to 5 s) and `problem` says
what is wrong meanwhile (serve shows it in HTTP /health, the status topic and systemd's
status line). A broker that answers but refuses the login at startup is a configuration
error: start() raises.

`availability_topic` is retained "online", with a Last Will of retained "offline" for a
crash or a lost link; a clean stop publishes "offline" itself. `status_topic` gets a retained
JSON status (model, queue depth, tokens/s, memory, CPU temperature) every
`status_interval_s`. With `home_assistant = true`, retained discovery configs make those
readings Home Assistant sensors.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import ssl
import threading
import time

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgellm.services.config import MQTTConfig
from edgellm.services.engine import Job, RequestEngine
from edgellm.services.protocol import (ServiceError, decode_payload, parse_request,
                                       request_id_of)
from edgellm.services.system_status import system_status

log = logging.getLogger(__name__)

_EXTRA_FIELDS = {"reply_to": str, "compact": bool}
_DEDUP_MAX = 10000
MAX_TOPIC_BYTES = 65535      # MQTT's limit: a topic name has a two-byte length


def reply_topic_problem(topic: str) -> str | None:
    """Why `topic` cannot be published to, as the end of a sentence; None if it can."""
    if not topic:
        return "is empty"
    if "+" in topic or "#" in topic:
        return "has a wildcard (+ or #); replies need one plain topic"
    if "\0" in topic:
        return "contains a NUL character"
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if size > MAX_TOPIC_BYTES:
        return f"is {size} bytes; MQTT's limit is {MAX_TOPIC_BYTES}"
    return None


def publish_packet_size(topic: str, payload_len: int, qos: int = 1) -> int:
    """Bytes of an MQTT 3.1.1 PUBLISH packet (no properties): what PubSubClient buffers."""
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + payload_len
    length_bytes = 1
    while remaining >= 128 ** length_bytes:
        length_bytes += 1
    return 1 + length_bytes + remaining


class _Route:
    """Where one request's replies go, and the compact-mode text buffer."""

    __slots__ = ("topic", "correlation", "id", "compact", "buffer", "seq", "key")

    def __init__(self, topic, correlation, rid, compact, key):
        self.topic = topic
        self.correlation = correlation
        self.id = rid
        self.compact = compact
        self.buffer = ""
        self.seq = 0
        self.key = key


class MQTTService:
    name = "mqtt"

    def __init__(self, engine: RequestEngine, cfg: MQTTConfig):
        self.engine = engine
        self.cfg = cfg
        self.v5 = cfg.protocol == "5"
        self.connected = threading.Event()
        self._first_attempt = threading.Event()   # the first connect succeeded or failed
        self._refused: str | None = None          # the broker's reason, if it said no
        self._accepting = True
        self._seen: collections.OrderedDict = collections.OrderedDict()   # key -> time
        self._seen_lock = threading.Lock()
        self._stop = threading.Event()
        self._status_thread: threading.Thread | None = None
        self.duplicates = 0
        self.connects = 0
        # Message ids of QoS 1 publishes the broker has not acknowledged yet. publish() while
        # disconnected still queues the message (paho sends it after reconnecting), so the
        # acknowledgement (on_publish) is the only reliable "delivered to the broker".
        self._unacked: set[int] = set()
        self._acked_early: set[int] = set()   # acks that beat publish() back to its caller
        self._unacked_lock = threading.Lock()
        self.client = self._make_client()

    # -- connection ---------------------------------------------------------------------------

    def _make_client(self) -> paho.Client:
        cfg = self.cfg
        if self.v5:
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                                 protocol=MQTTProtocolVersion.MQTTv5)
        else:
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                                 protocol=MQTTProtocolVersion.MQTTv311, clean_session=False)
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls is not None:
            client.tls_set(ca_certs=cfg.tls.ca_file, certfile=cfg.tls.cert_file,
                           keyfile=cfg.tls.key_file, cert_reqs=ssl.CERT_REQUIRED)
            client.tls_insecure_set(cfg.tls.insecure)
        client.will_set(cfg.availability_topic, "offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.max_queued_messages_set(0)        # unbounded: replies wait out an outage
        client.max_inflight_messages_set(64)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        # A bug in a callback must not end paho's network thread (and with it, all service):
        # paho logs the exception and carries on.
        client.suppress_exceptions = True
        client.enable_logger(log)
        return client

    def start(self, connect_timeout: float = 10.0) -> None:
        """Connects in the background and waits up to `connect_timeout` for the first
        attempt: a refused login raises OSError; an unreachable broker is retried."""
        cfg = self.cfg
        props = None
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = cfg.session_expiry_s
        if self.v5:
            # clean_start False on every connect: requests queued for us while we were
            # away (restart, broker restart) are delivered, not discarded.
            self.client.connect_async(cfg.host, cfg.port, cfg.keepalive_s, clean_start=False,
                                      properties=props)
        else:
            self.client.connect_async(cfg.host, cfg.port, cfg.keepalive_s)
        # paho's thread makes the first attempt and, when it fails, every retry after it.
        self.client.loop_start()
        self._first_attempt.wait(connect_timeout)
        if self._refused is not None:
            self.client.disconnect()
            self.client.loop_stop()
            raise OSError(f"MQTT broker {cfg.host}:{cfg.port} did not accept the connection: "
                          f"{self._refused} (check mqtt.username, the password and TLS)")
        if not self.connected.is_set():
            log.warning("mqtt: %s; serving without it until it answers", self.problem)
        self._status_thread = threading.Thread(target=self._status_loop, name="mqtt-status",
                                               daemon=True)
        self._status_thread.start()

    @property
    def subscription(self) -> str:
        topic = self.cfg.request_topic
        return f"$share/{self.cfg.shared_group}/{topic}" if self.cfg.shared_group else topic

    @property
    def problem(self) -> str | None:
        """What keeps MQTT from serving, or None while connected."""
        if self.connected.is_set():
            return None
        why = (f"refused the connection ({self._refused})" if self._refused
               else "is unreachable")
        return f"broker {self.cfg.host}:{self.cfg.port} {why}; reconnecting"

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("mqtt: broker refused the connection: %s", reason_code)
            self._refused = str(reason_code)
            self._first_attempt.set()
            return
        self._refused = None
        self.connects += 1
        log.info("mqtt: connected to %s:%d (session present: %s)", self.cfg.host,
                 self.cfg.port, flags.session_present)
        # Subscribing here (not once after connect) restores the subscription after any
        # reconnect, including to a broker that restarted without our session.
        client.subscribe(self.subscription, qos=1)
        self._publish_tracked(self.cfg.availability_topic, "online", retain=True)
        if self.cfg.home_assistant:
            self._publish_discovery()
        self.connected.set()          # before the status, which reports it
        self._publish_status()
        self._first_attempt.set()

    def _on_connect_fail(self, client, userdata) -> None:
        # No broker answered (refused TCP connection, timeout, TLS failure); paho retries.
        self._refused = None
        self._first_attempt.set()
        if not self._stop.is_set():
            log.debug("mqtt: broker %s:%d unreachable; retrying", self.cfg.host, self.cfg.port)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            log.warning("mqtt: disconnected (%s); reconnecting", reason_code)

    # -- requests -----------------------------------------------------------------------------

    def _on_message(self, client, userdata, msg) -> None:
        try:
            self._handle(msg)
        except Exception:
            log.exception("mqtt: request on %s failed", msg.topic)

    def _handle(self, msg) -> None:
        props = getattr(msg, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        correlation = getattr(props, "CorrelationData", None) if props else None
        obj = None
        try:
            obj = decode_payload(msg.payload, self.cfg.max_request_bytes)
        except ServiceError as err:
            usable = response_topic is not None and reply_topic_problem(response_topic) is None
            route = _Route(response_topic if usable else self.cfg.default_reply_topic,
                           correlation, None, self.cfg.compact, None)
            self._send_error(route, err)
            return

        reply_to = obj.get("reply_to") if isinstance(obj, dict) else None
        asked, field = ((response_topic, "response_topic") if response_topic is not None else
                        (reply_to, "reply_to") if isinstance(reply_to, str) else (None, None))
        problem = reply_topic_problem(asked) if asked is not None else None
        topic = asked if asked is not None and problem is None else self.cfg.default_reply_topic
        rid = request_id_of(obj)
        if rid is None and correlation is not None:
            try:
                rid = correlation.decode("utf-8")
            except UnicodeDecodeError:
                rid = None
        compact = obj.get("compact") if isinstance(obj, dict) else None
        compact = compact if isinstance(compact, bool) else self.cfg.compact
        ident = correlation if correlation is not None else (
            None if request_id_of(obj) is None else json.dumps(request_id_of(obj)))
        # A redelivery repeats the payload byte for byte; a corrected request does not.
        key = (topic, ident, hashlib.sha1(msg.payload).digest()) if ident is not None else None
        route = _Route(topic, correlation, rid, compact, key)

        if isinstance(obj, dict) and "cancel" in obj:
            self._send_error(route, ServiceError(
                "bad_value", "cancel over MQTT is not supported; use deadline_s", "cancel"))
            return
        if key is not None and self._already_seen(key):
            self.duplicates += 1
            log.info("mqtt: duplicate request %r on %s ignored", ident, topic)
            return
        try:
            if problem is None:
                request, _ = parse_request(obj, self.engine.limits, _EXTRA_FIELDS)
                if route.compact:
                    problem = self._compact_room_problem(route, request.max_tokens)
            if problem is not None:
                # Nothing can reach the requester on the topic it named: tell it on the
                # default reply topic, with its id and correlation data.
                named = route.topic if asked is None else asked
                route.topic = self.cfg.default_reply_topic
                err = ServiceError("bad_reply_topic", f"the {field or 'reply topic'} "
                                   f"{_shorten(named)} {problem}; this error goes to "
                                   f"{route.topic}", field)
                # A compact error carries only the code: the reason is in the log.
                log.info("mqtt: request %r refused: %s", route.id, err.message)
                raise err
            if not self._accepting:
                raise ServiceError("shutting_down", "the service is stopping")
            self.engine.submit(request, lambda job, m: self._deliver(route, m),
                               client=f"mqtt:{topic}")
        except ServiceError as err:
            # Remembered like an accepted request: a redelivery of a request that got
            # "busy" must not get a second reply. A retry is a new request with a new id.
            self._send_error(route, err)
            return

    def _already_seen(self, key) -> bool:
        """Records `key`; True if it was recorded within the de-dup window."""
        now = time.monotonic()
        with self._seen_lock:
            while self._seen:
                oldest_key, t = next(iter(self._seen.items()))
                if now - t <= self.cfg.dedup_window_s and len(self._seen) < _DEDUP_MAX:
                    break
                self._seen.popitem(last=False)
            if key in self._seen:
                return True
            self._seen[key] = now
            return False

    # -- replies ------------------------------------------------------------------------------

    def _publish(self, route: _Route, payload: bytes) -> None:
        props = None
        if self.v5 and route.correlation is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = route.correlation
        self._publish_tracked(route.topic, payload, props)

    def _publish_tracked(self, topic: str, payload, props=None, retain: bool = False):
        # Every publish goes through here, so every acknowledgement matches one of ours. The
        # lock is never held while calling into paho (whose network thread holds its own
        # locks while it calls on_publish): an ack may therefore arrive before the mid is
        # recorded, and is parked in _acked_early.
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=props)
        with self._unacked_lock:
            if info.mid in self._acked_early:
                self._acked_early.discard(info.mid)
            else:
                self._unacked.add(info.mid)
        return info

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._unacked_lock:
            if mid in self._unacked:
                self._unacked.discard(mid)
            else:
                self._acked_early.add(mid)

    def _deliver(self, route: _Route, message: dict) -> None:
        kind = message["type"]
        if route.compact:
            self._deliver_compact(route, message)
            return
        message = dict(message, id=route.id)
        self._publish(route, json.dumps(message, ensure_ascii=False,
                                        separators=(",", ":")).encode())
        if kind != "chunk":
            log.debug("mqtt: %s %r -> %s", kind, route.id, route.topic)

    def _send_error(self, route: _Route, err: ServiceError) -> None:
        self._deliver(route, err.reply(route.id))

    def _deliver_compact(self, route: _Route, message: dict) -> None:
        kind = message["type"]
        head = {"i": route.id} if route.id is not None else {}
        if kind == "error":
            self._publish_compact(route, {**head, "e": message["code"]})
            return
        if kind == "chunk":
            route.buffer += message["text"]
            # Coalesce pieces: a packet per token would waste most of a 256-byte budget.
            while self._fits(route, head, route.buffer) is False:
                self._flush_compact(route, head)
            return
        if "text" in message:
            route.buffer += message["text"]
        while route.buffer:
            self._flush_compact(route, head)
        final = {**head, "s": route.seq, "f": message["finish_reason"],
                 "n": message["stats"]["completion_tokens"]}
        self._publish_compact(route, final)

    def _compact_room_problem(self, route: _Route, max_tokens: int) -> str | None:
        """Why compact packets on the route's topic cannot carry this request's replies (the
        widest final, or a chunk of one character), as the end of a sentence; or None."""
        limit = self.cfg.compact_max_packet
        head = {"i": route.id} if route.id is not None else {}
        widest = max(len(self._encode_compact(p)) for p in (
            {**head, "s": max_tokens, "t": "\U0001F600"},
            {**head, "s": max_tokens, "f": "length", "n": max_tokens}))
        size = publish_packet_size(route.topic, widest)
        if size <= limit:
            return None
        topic_bytes = len(route.topic.encode())
        room = max(0, topic_bytes - (size - limit))
        return (f"is {topic_bytes} bytes: with this id, compact packets of {limit} bytes "
                f"leave room for a reply topic of at most {room} bytes")

    def _encode_compact(self, obj: dict) -> bytes:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()

    def _fits(self, route: _Route, head: dict, text: str) -> bool:
        payload = self._encode_compact({**head, "s": route.seq, "t": text})
        return publish_packet_size(route.topic, len(payload)) <= self.cfg.compact_max_packet

    def _flush_compact(self, route: _Route, head: dict) -> None:
        """Sends the longest prefix of the buffer that fits one packet."""
        text = route.buffer
        lo, hi = 0, len(text)
        while lo < hi:   # binary search on characters; encoded size grows with the prefix
            mid = (lo + hi + 1) // 2
            if self._fits(route, head, text[:mid]):
                lo = mid
            else:
                hi = mid - 1
        if lo == 0:
            if not self._fits(route, head, ""):
                raise ServiceError("too_large", "reply topic too long for compact packets")
            lo = 1   # unreachable for sane limits: one character always fits
        self._publish_compact(route, {**head, "s": route.seq, "t": text[:lo]})
        route.seq += 1
        route.buffer = text[lo:]

    def _publish_compact(self, route: _Route, obj: dict) -> None:
        payload = self._encode_compact(obj)
        if publish_packet_size(route.topic, len(payload)) > self.cfg.compact_max_packet:
            # An id or topic too long to fit even a bare error: drop the id to get through.
            obj = {k: v for k, v in obj.items() if k != "i"}
            payload = self._encode_compact(obj)
        self._publish(route, payload)

    # -- status -------------------------------------------------------------------------------

    def status_payload(self, state: str | None = None) -> dict:
        status = {**self.engine.status(), **system_status()}
        if state is not None:
            status["state"] = state
        return status

    def _publish_status(self, state: str | None = None):
        return self._publish_tracked(self.cfg.status_topic,
                                     json.dumps(self.status_payload(state)), retain=True)

    def _status_loop(self) -> None:
        while not self._stop.wait(self.cfg.status_interval_s):
            if self.connected.is_set():
                self._publish_status()

    def _publish_discovery(self) -> None:
        node = self.engine.node
        device = {"identifiers": [f"edgellm_{node}"], "name": f"edgellm {node}",
                  "model": self.engine.model_name, "manufacturer": "edgellm"}
        sensors = {
            "queue_depth": ("Queue depth", None, None),
            "tokens_per_s": ("Tokens per second", "tok/s", None),
            "cpu_temp_c": ("CPU temperature", "°C", "temperature"),
            "mem_available_mb": ("Memory available", "MB", None),
            "state": ("State", None, None),
        }
        for key, (label, unit, device_class) in sensors.items():
            uid = f"edgellm_{node}_{key}".replace("-", "_")
            config = {"name": label, "unique_id": uid, "object_id": uid,
                      "state_topic": self.cfg.status_topic,
                      "value_template": f"{{{{ value_json.{key} }}}}",
                      "availability_topic": self.cfg.availability_topic,
                      "payload_available": "online", "payload_not_available": "offline",
                      "device": device}
            if unit:
                config["unit_of_measurement"] = unit
            if device_class:
                config["device_class"] = device_class
            self._publish_tracked(f"{self.cfg.discovery_prefix}/sensor/{uid}/config",
                                  json.dumps(config), retain=True)

    # -- stopping -----------------------------------------------------------------------------

    def stop_accepting(self) -> None:
        self._accepting = False

    def close(self, timeout: float = 3.0) -> None:
        """Publishes the last replies, retained offline status and availability; disconnects."""
        self._stop.set()
        end = time.monotonic() + timeout
        if self.connected.is_set():
            self._publish_status("offline")
            self._publish_tracked(self.cfg.availability_topic, "offline", retain=True)
        # The last replies (shutting_down errors among them) and `offline` get the time left
        # to be acknowledged; while disconnected paho keeps retrying until then.
        while time.monotonic() < end:
            with self._unacked_lock:
                if not self._unacked:
                    break
            time.sleep(0.02)
        self.client.disconnect()
        self.client.loop_stop()
        if self._status_thread is not None:
            self._status_thread.join(1.0)


def _shorten(topic: str, limit: int = 60) -> str:
    """A topic for an error message: quoted, and cut short if long."""
    if len(topic) <= limit:
        return repr(topic)
    return f"{topic[:limit]!r}... ({len(topic)} characters)"
