"""`serve` as a process: sd_notify READY/WATCHDOG/STOPPING, SIGTERM, SIGHUP, Last Will,
and two processes sharing one MQTT subscription."""

import json
import os
import signal
import socket
import time

import pytest
from services_fixtures import (MQTTProbe, NotifySocket, broker,  # noqa: F401
                               free_port, line_request, serve_process)


def config(tmp_path, broker_port=None, http_port=None, node="s1", extra=""):
    text = f'[engine]\nnode = "{node}"\nqueue_size = 2\n[model]\nn_ctx = 512\n'
    text += f'[socket]\npath = "{tmp_path / (node + ".sock")}"\n'
    if http_port:
        text += f"[http]\nport = {http_port}\n"
    if broker_port:
        text += (f'[mqtt]\nhost = "127.0.0.1"\nport = {broker_port}\n'
                 f'status_interval_s = 1\n')
    return text + extra


def test_sigterm_answers_in_flight_requests_publishes_offline_and_exits_0(tmp_path, broker):
    notify = NotifySocket(tmp_path / "notify")
    http_port = free_port()
    probe = MQTTProbe(broker.port)
    probe.subscribe("edgellm/s1/availability")
    proc = serve_process(config(tmp_path, broker.port, http_port), tmp_path,
                         {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"})
    try:
        ready = notify.wait("READY=1")
        assert "STATUS=serving" in ready
        # READY came after the adapters listen: every one of them answers right away.
        socket.create_connection(("127.0.0.1", http_port), timeout=1).close()
        assert probe.get(10).payload == b"online"
        notify.wait("WATCHDOG=1", 5)
        s, f = line_request(str(tmp_path / "s1.sock"), {
            "id": "inflight", "prompt": "Tell me a long story.", "max_tokens": 400,
            "stream": True})
        assert json.loads(f.readline())["type"] == "chunk"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        replies = [json.loads(line) for line in f]
        assert replies[-1] == {"id": "inflight", "type": "error", "code": "shutting_down",
                               "message": "the service is stopping"}
        assert proc.wait(10) == 0
        assert time.monotonic() - t0 < 10
        notify.wait("STOPPING=1", 1)
        msg = probe.get(5)
        assert (msg.topic, msg.payload) == ("edgellm/s1/availability", b"offline")
        assert not os.path.exists(tmp_path / "s1.sock")
    finally:
        if proc.poll() is None:
            proc.kill()
        probe.close()
        notify.close()


def test_killed_process_leaves_its_last_will(tmp_path, broker):
    probe = MQTTProbe(broker.port)
    probe.subscribe("edgellm/s2/availability")
    proc = serve_process(config(tmp_path, broker.port, node="s2"), tmp_path)
    try:
        msg = probe.get(120)
        assert msg.payload == b"online"
        proc.kill()
        proc.wait()
        msg = probe.get(30)
        assert msg.payload == b"offline"
        # Retained: a device that subscribes later learns the board is gone.
        late = MQTTProbe(broker.port)
        late.subscribe("edgellm/s2/availability")
        got = late.get(5)
        assert got.payload == b"offline" and got.retain
        late.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        probe.close()


def test_sighup_reloads_engine_limits_and_moves_adapters(tmp_path):
    notify = NotifySocket(tmp_path / "notify")
    port_a, port_b = free_port(), free_port()
    proc = serve_process(config(tmp_path, http_port=port_a), tmp_path,
                         {"NOTIFY_SOCKET": notify.path})
    cfg_path = next(tmp_path.glob("serve-*.toml"))
    try:
        notify.wait("READY=1")
        cfg_path.write_text(config(tmp_path, http_port=port_b).replace(
            "queue_size = 2", "queue_size = 5"))
        proc.send_signal(signal.SIGHUP)
        notify.wait("RELOADING=1", 30)
        notify.wait("READY=1", 30)
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", port_b, timeout=10)
        conn.request("GET", "/health")
        health = json.loads(conn.getresponse().read())
        assert health["queue_size"] == 5
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port_a), timeout=1)
        # A broken config is refused and the service keeps running as it was.
        cfg_path.write_text("[http]\nport = 'eighty'\n")
        proc.send_signal(signal.SIGHUP)
        notify.wait("READY=1", 30)
        conn = http.client.HTTPConnection("127.0.0.1", port_b, timeout=10)
        conn.request("GET", "/health")
        assert conn.getresponse().status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert "reload: " in proc.log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()


def test_two_serve_processes_share_one_subscription(tmp_path, broker):
    extra = 'shared_group = "boards"\n'
    # Queues deep enough for all six: the point here is the split, not "busy".
    procs = [serve_process(config(tmp_path, broker.port, node=n, extra=extra).replace(
        "queue_size = 2", "queue_size = 6"), tmp_path) for n in ("p1", "p2")]
    probe = MQTTProbe(broker.port)
    try:
        probe.subscribe("edgellm/+/availability")
        online = set()
        while len(online) < 2:
            msg = probe.get(180)
            if msg.payload == b"online":
                online.add(msg.topic)
        probe.subscribe("c/shared")
        for i in range(6):
            probe.publish("edgellm/request", {"id": i, "prompt": "Hi", "max_tokens": 1},
                          response_topic="c/shared")
        replies = []
        while len(replies) < 6:
            msg = probe.get(180)
            if msg.topic == "c/shared":
                replies.append(json.loads(msg.payload))
        assert sorted(r["id"] for r in replies) == list(range(6))
        assert all(r["type"] == "final" for r in replies), replies
        assert {r["stats"]["node"] for r in replies} == {"p1", "p2"}
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                assert p.wait(10) == 0
            finally:
                if p.poll() is None:
                    p.kill()
        probe.close()


def test_bad_config_exits_2_with_the_reason(tmp_path):
    proc = serve_process("[http]\nport = 'x'\n", tmp_path)
    assert proc.wait(60) == 2
    assert "http.port must be an integer, got 'x'" in proc.log_path.read_text()
