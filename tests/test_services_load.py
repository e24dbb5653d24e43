"""Load (not timed): 200 requests from 20 concurrent clients over every transport at once,
with the MQTT broker restarted mid-run. Every accepted request must get exactly one final
reply (over MQTT QoS 1 a restart may deliver that one reply twice; the client drops the copy
by id, and the test checks no request ever got two different answers); a full queue must
answer "busy". Prints sent / accepted / busy / answered / lost."""

import collections
import http.client
import json
import os
import random
import select
import socket
import threading
import time
import tty

import pytest
from services_fixtures import MQTTProbe, broker, make_engine  # noqa: F401

from edgellm.services.config import parse_config
from edgellm.services.framing import FrameDecoder, encode_frame
from edgellm.services.http_api import HTTPService
from edgellm.services.local_socket import LocalSocketService
from edgellm.services.mqtt import MQTTService
from edgellm.services.serial_line import SerialService

PER_CLIENT = 10
CLIENTS = {"mqtt_v5": 5, "mqtt_v311": 3, "socket": 5, "http": 5, "serial_text": 1,
           "serial_cobs": 1}
# Raw prompts of a few tokens and one generated token keep 200 requests cheap on 2 cores.
PROMPTS = ["Hi", "Hello", "Blue", "Yes", "One"]
REPLY_TIMEOUT_S = 120


def pause_after(outcome: str, rng) -> None:
    """A polite client: backs off after "busy", thinks a little after an answer."""
    time.sleep(rng.uniform(0.5, 2.0) if outcome == "busy" else rng.uniform(0.0, 0.5))


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.by_transport = collections.defaultdict(collections.Counter)
        # request id -> every terminal reply received for it (JSON text). MQTT QoS 1 is
        # at-least-once: a broker restart can deliver the same reply twice, which a client
        # drops by id; what must never happen is two different terminal replies.
        self.terminals = collections.defaultdict(list)

    def add(self, transport, outcome):
        with self.lock:
            self.counts[outcome] += 1
            self.by_transport[transport][outcome] += 1

    def outcome(self, transport, reply):
        """Classifies one terminal reply: answered, busy or failed:<code>."""
        if reply["type"] == "final":
            kind = "answered"
        elif reply["code"] == "busy":
            kind = "busy"
        else:
            kind = f"failed:{reply['code']}"
        self.add(transport, kind)
        return kind


def mqtt_client(tally, port, idx, v5):
    transport = "mqtt_v5" if v5 else "mqtt_v311"
    p = MQTTProbe(port, "5" if v5 else "3.1.1", client_id=f"load-{transport}-{idx}",
                  persistent=True)
    topic = f"load/{transport}/{idx}"
    p.subscribe(topic)
    seen = []
    rng = random.Random(f"{transport}{idx}")
    try:
        for n in range(PER_CLIENT):
            rid = f"{transport}-{idx}-{n}"
            body = {"id": rid, "prompt": PROMPTS[n % len(PROMPTS)], "max_tokens": 1}
            if v5:
                p.publish("edgellm/request", body, response_topic=topic,
                          correlation=rid.encode())
            else:
                p.publish("edgellm/request", dict(body, reply_to=topic))
            tally.add(transport, "sent")
            end = time.monotonic() + REPLY_TIMEOUT_S
            while True:
                try:
                    msg = json.loads(p.get(max(0.1, end - time.monotonic())).payload)
                except Exception:
                    tally.add(transport, "lost")
                    break
                seen.append(msg)
                if msg.get("id") == rid and msg["type"] != "chunk":
                    pause_after(tally.outcome(transport, msg), rng)
                    break
        time.sleep(2.0)    # a duplicate terminal reply would arrive by now
        while not p.messages.empty():
            seen.append(json.loads(p.get(0.1).payload))
    finally:
        p.close()
    with tally.lock:
        for msg in seen:
            if msg["type"] != "chunk":
                tally.terminals[msg["id"]].append(json.dumps(msg, sort_keys=True))


def line_client(tally, transport, send, recv):
    rng = random.Random(transport)
    for n in range(PER_CLIENT):
        rid = f"{transport}-{n}-{threading.get_ident()}"
        send({"id": rid, "prompt": PROMPTS[n % len(PROMPTS)], "max_tokens": 1})
        tally.add(transport, "sent")
        while True:
            msg = recv()
            if msg is None:
                tally.add(transport, "lost")
                return
            if msg.get("id") == rid and msg["type"] != "chunk":
                with tally.lock:
                    tally.terminals[rid].append(json.dumps(msg, sort_keys=True))
                pause_after(tally.outcome(transport, msg), rng)
                break


def socket_client(tally, path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.settimeout(REPLY_TIMEOUT_S)
    f = s.makefile("rb")

    def recv():
        try:
            line = f.readline()
        except OSError:
            return None
        return json.loads(line) if line else None

    line_client(tally, "socket", lambda o: s.sendall(json.dumps(o).encode() + b"\n"), recv)
    s.close()


def serial_client(tally, master, framing):
    buf, frames, pending = [b""], FrameDecoder(1 << 16), []

    def send(obj):
        payload = json.dumps(obj).encode()
        os.write(master, payload + b"\n" if framing == "text" else encode_frame(payload))

    def recv():
        end = time.monotonic() + REPLY_TIMEOUT_S
        while True:
            if framing == "text" and b"\n" in buf[0]:
                line, buf[0] = buf[0].split(b"\n", 1)
                return json.loads(line)
            if framing == "cobs" and pending:
                return json.loads(pending.pop(0).payload)
            ready, _, _ = select.select([master], [], [], max(0, end - time.monotonic()))
            if not ready:
                return None
            data = os.read(master, 4096)
            if framing == "text":
                buf[0] += data
            else:
                pending.extend(frames.feed(data))

    line_client(tally, f"serial_{framing}", send, recv)


def http_client(tally, port, idx):
    rng = random.Random(f"http{idx}")
    for n in range(PER_CLIENT):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REPLY_TIMEOUT_S)
        body = {"model": "m", "max_tokens": 1, "prompt": PROMPTS[n % len(PROMPTS)]}
        tally.add("http", "sent")
        try:
            conn.request("POST", "/v1/completions", json.dumps(body),
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = json.loads(resp.read())
        except OSError:
            tally.add("http", "lost")
            continue
        finally:
            conn.close()
        reply = ({"type": "final"} if resp.status == 200 else
                 {"type": "error", "code": data["error"]["code"]})
        with tally.lock:
            tally.terminals[f"http-{idx}-{n}"].append(json.dumps(reply))
        pause_after(tally.outcome("http", reply), rng)


def test_load_every_accepted_request_gets_one_final_reply(broker, make_engine, tmp_path,
                                                          capsys):
    engine = make_engine(queue_size=8, node="load")
    cfg = parse_config({"engine": {"node": "load"},
                        "mqtt": {"host": "127.0.0.1", "port": broker.port,
                                 "session_expiry_s": 120}}).mqtt
    mqtt = MQTTService(engine, cfg)
    sock = LocalSocketService(engine, path=str(tmp_path / "load.sock"))
    web = HTTPService(engine, port=0)
    ptys = {}
    serials = []
    for framing in ("text", "cobs"):
        master, slave = os.openpty()
        tty.setraw(master)
        ptys[framing] = (master, slave)
        serials.append(SerialService(engine, os.ttyname(slave), mode=framing))
    adapters = [mqtt, sock, web, *serials]
    for a in adapters:
        a.start()

    tally = Tally()
    threads = []
    for i in range(CLIENTS["mqtt_v5"]):
        threads.append(threading.Thread(target=mqtt_client, args=(tally, broker.port, i, True)))
    for i in range(CLIENTS["mqtt_v311"]):
        threads.append(threading.Thread(target=mqtt_client,
                                        args=(tally, broker.port, i, False)))
    for _ in range(CLIENTS["socket"]):
        threads.append(threading.Thread(target=socket_client, args=(tally, sock.path)))
    for i in range(CLIENTS["http"]):
        threads.append(threading.Thread(target=http_client, args=(tally, web.address[1], i)))
    for framing in ("text", "cobs"):
        threads.append(threading.Thread(target=serial_client,
                                        args=(tally, ptys[framing][0], framing)))
    assert len(threads) == 20

    restarted = threading.Event()

    def restart_broker_mid_run():
        while sum(tally.counts[k] for k in ("answered", "busy")) < 60:
            if all(not t.is_alive() for t in threads):
                return
            time.sleep(0.05)
        broker.restart(down_s=1.0)
        restarted.set()

    chaos = threading.Thread(target=restart_broker_mid_run)
    try:
        for t in threads:
            t.start()
        chaos.start()
        for t in threads:
            t.join(900)
        chaos.join(30)
    finally:
        for a in adapters:
            a.stop_accepting()
        engine.stop()
        for a in adapters:
            a.close()
        for master, slave in ptys.values():
            os.close(master)
            os.close(slave)

    c = tally.counts
    failed = {k: v for k, v in c.items() if k.startswith("failed:")}
    accepted = c["sent"] - c["busy"]
    redelivered = sum(len(v) - 1 for v in tally.terminals.values())
    with capsys.disabled():
        print(f"\nload: sent={c['sent']} accepted={accepted} busy={c['busy']} "
              f"answered={c['answered']} lost={c['lost']} failed={failed} "
              f"mqtt_requests_deduplicated={mqtt.duplicates} mqtt_replies_redelivered="
              f"{redelivered} broker_restarted={restarted.is_set()}")
        for transport, counts in sorted(tally.by_transport.items()):
            print(f"  {transport}: {dict(counts)}")
    assert restarted.is_set()
    assert c["sent"] == 200
    assert c["lost"] == 0 and not failed
    assert c["answered"] == accepted and accepted > 0
    assert c["busy"] > 0             # 20 clients on a queue of 8: the limit was exercised
    conflicting = {k: v for k, v in tally.terminals.items() if len(set(v)) != 1}
    assert not conflicting
    assert len(tally.terminals) == c["sent"]
    assert engine.counts["answered"] == c["answered"]
