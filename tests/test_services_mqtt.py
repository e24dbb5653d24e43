"""MQTT transport against a real Mosquitto broker, on the real model."""

import json
import time

import pytest
from services_fixtures import (REQ, Broker, MQTTProbe, broker, make_engine, make_service,  # noqa: F401
                               make_tls_files, mqtt_cfg, packet_size, probe, wait_for)

from edgellm.services.mqtt import MQTTService


def test_v5_reply_goes_to_the_response_topic_with_the_correlation_data(make_service, probe):
    make_service()
    p = probe()
    p.subscribe("client/inbox")
    p.publish(REQ, {"prompt": "Hi", "max_tokens": 1}, response_topic="client/inbox",
              correlation=b"\x00corr\xff")
    msg = p.get(120)
    assert msg.topic == "client/inbox" and msg.qos == 1
    assert msg.properties.CorrelationData == b"\x00corr\xff"
    reply = json.loads(msg.payload)
    assert reply["type"] == "final" and reply["id"] is None
    assert reply["stats"]["completion_tokens"] == 1


def test_v311_request_names_its_reply_topic_and_id_in_the_payload(make_service, probe):
    make_service()
    p = probe("3.1.1")
    p.subscribe("dev/42/rx")
    p.publish(REQ, {"id": "42", "reply_to": "dev/42/rx", "prompt": "Hi", "max_tokens": 2,
                    "stream": True})
    msgs = p.until_terminal(120)
    assert all(m["id"] == "42" for m in msgs)
    chunks, final = msgs[:-1], msgs[-1]
    assert [c["seq"] for c in chunks] == list(range(len(chunks))) == list(range(final["chunks"]))
    assert final["type"] == "final" and set(final["stats"]) >= {
        "prompt_tokens", "completion_tokens", "tokens_per_s", "queue_ms"}


def test_engine_connected_as_v311_serves_v311_devices(make_service, probe):
    svc = make_service(protocol="3.1.1")
    assert not svc.v5
    p = probe("3.1.1")
    p.subscribe("dev/old")
    p.publish(REQ, {"id": 9, "reply_to": "dev/old", "prompt": "Hi", "max_tokens": 1})
    reply = p.get_json(120)
    assert (reply["id"], reply["type"]) == (9, "final")


def test_compact_replies_fit_the_packet_budget_and_rebuild_the_text(make_service, probe):
    make_service(compact_max_packet=48)
    p = probe("3.1.1")
    p.subscribe("d/1")
    p.subscribe("d/2")
    ask = {"prompt": "List three colours:", "max_tokens": 6, "temperature": 0}
    # Twice: the compact run then starts from the same cached prefix as the second plain
    # one (a cached prefix and a batched prefill differ in the last float bits).
    for rid in ("a0", "a"):
        p.publish(REQ, {**ask, "id": rid, "reply_to": "d/1"})
        full = p.get_json(120)
    assert full["type"] == "final"
    p.publish(REQ, {**ask, "id": "b", "reply_to": "d/2", "compact": True})
    packets = []
    while True:
        msg = p.get(120)
        assert msg.topic == "d/2"
        assert packet_size(msg.topic, msg.payload) <= 48, msg.payload
        packets.append(json.loads(msg.payload))
        if "f" in packets[-1]:
            break
    chunks, final = packets[:-1], packets[-1]
    assert [c["s"] for c in chunks] == list(range(len(chunks)))
    assert all(c["i"] == "b" for c in packets)
    assert "".join(c["t"] for c in chunks) == full["text"]
    assert final == {"i": "b", "s": len(chunks), "f": full["finish_reason"],
                     "n": full["stats"]["completion_tokens"]}
    if len(full["text"].encode()) > 20:
        assert len(chunks) > 1


def test_compact_errors_are_short(make_service, probe):
    make_service()
    p = probe("3.1.1")
    p.subscribe("d/9")
    p.publish(REQ, {"id": "z", "reply_to": "d/9", "compact": True, "prompt": "x",
                    "max_tokens": -1})
    assert p.get_json(30) == {"i": "z", "e": "bad_value"}


def test_redelivered_request_is_answered_once(make_service, probe):
    svc = make_service()
    p = probe()
    p.subscribe("c/once")
    for _ in range(2):
        p.publish(REQ, {"prompt": "Hi", "max_tokens": 1}, response_topic="c/once",
                  correlation=b"same-id")
    assert p.get_json(120)["type"] == "final"
    time.sleep(1.0)
    assert p.messages.empty()
    assert svc.duplicates == 1
    # A new correlation id is a new request.
    p.publish(REQ, {"prompt": "Hi", "max_tokens": 1}, response_topic="c/once",
              correlation=b"other-id")
    assert p.get_json(120)["type"] == "final"


def test_bad_payloads_get_error_codes_and_serving_goes_on(make_service, probe):
    make_service(max_request_bytes=512)
    p = probe()
    p.subscribe("c/err")
    p.subscribe("edgellm/reply")
    cases = [(b"{oops", "bad_json"), (b'{"prompt": "\xc3\x28"}', "bad_utf8"),
             (json.dumps({"prompt": "x" * 600}).encode(), "too_large"),
             (b'{"prompt": "x", "temprature": 1}', "unknown_field"),
             (b'{"prompt": "x", "max_tokens": "10"}', "bad_field"),
             (b'{"prompt": "x", "max_tokens": 100000000}', "bad_value"),
             (b'{"max_tokens": 3}', "missing_field")]
    for i, (payload, code) in enumerate(cases):
        p.publish(REQ, payload, response_topic="c/err", correlation=str(i).encode())
        msg = p.get(30)
        assert (msg.topic, msg.properties.CorrelationData) == ("c/err", str(i).encode())
        assert json.loads(msg.payload)["code"] == code, payload
    # No reply topic at all: the error goes to the default reply topic.
    p.publish(REQ, b"not json")
    msg = p.get(30)
    assert msg.topic == "edgellm/reply" and json.loads(msg.payload)["code"] == "bad_json"
    p.publish(REQ, {"prompt": "Hi", "max_tokens": 1}, response_topic="c/err")
    assert p.get_json(120)["type"] == "final"


def test_full_queue_answers_busy(make_service, probe):
    make_service(engine_kw={"queue_size": 0})
    p = probe()
    p.subscribe("c/long")
    p.subscribe("c/busy")
    p.publish(REQ, {"prompt": "Tell a story.", "max_tokens": 300, "stream": True,
                    "deadline_s": 20}, response_topic="c/long")
    assert p.get_json(120)["type"] == "chunk"
    p.publish(REQ, {"prompt": "Hi"}, response_topic="c/busy")
    while True:
        msg = p.get(30)
        if msg.topic == "c/busy":
            assert json.loads(msg.payload)["code"] == "busy"
            break


def test_status_availability_and_home_assistant_discovery(make_service, probe):
    svc = make_service(home_assistant=True)
    p = probe()
    p.subscribe("edgellm/t1/availability")
    p.subscribe("edgellm/t1/status")
    p.subscribe("homeassistant/sensor/+/config")
    seen = {}
    end = time.monotonic() + 10
    while time.monotonic() < end and len(seen) < 7:
        msg = p.get(10)
        seen[msg.topic] = msg
    assert seen["edgellm/t1/availability"].payload == b"online"
    assert seen["edgellm/t1/availability"].retain
    status = json.loads(seen["edgellm/t1/status"].payload)
    assert status["model"] == svc.engine.model_name and status["queue_depth"] == 0
    assert {"tokens_per_s", "mem_rss_mb", "mem_available_mb", "cpu_temp_c",
            "state"} <= set(status)
    configs = {t: json.loads(m.payload) for t, m in seen.items() if t.startswith("homeass")}
    assert len(configs) == 5
    assert {c["state_topic"] for c in configs.values()} == {"edgellm/t1/status"}
    assert {c["value_template"] for c in configs.values()} == {
        "{{ value_json.queue_depth }}", "{{ value_json.tokens_per_s }}",
        "{{ value_json.cpu_temp_c }}", "{{ value_json.mem_available_mb }}",
        "{{ value_json.state }}"}
    # A clean stop publishes offline itself (the Last Will is for crashes).
    svc.stop_accepting()
    svc.close()
    msg = p.get(10)
    while msg.topic != "edgellm/t1/availability":
        msg = p.get(10)
    assert msg.payload == b"offline"


def test_engine_resubscribes_after_a_broker_restart(broker, make_service, probe):
    svc = make_service()
    connects = svc.connects
    broker.restart()
    wait_for(lambda: svc.connects > connects, 30, what="reconnect")
    p = probe()
    p.subscribe("c/after")
    p.publish(REQ, {"prompt": "Hi", "max_tokens": 1}, response_topic="c/after")
    assert p.get_json(120)["type"] == "final"


def test_username_password_and_tls(tmp_path, make_engine):
    tls = make_tls_files(tmp_path)
    b = Broker(tmp_path, passwords={"edge": "pw-1"}, tls=tls).start()
    try:
        engine = make_engine(node="t1")
        with pytest.raises(OSError, match="did not accept"):
            MQTTService(engine, mqtt_cfg(b.port, username="edge", password="wrong")).start(3)
        svc = MQTTService(engine, mqtt_cfg(b.port, username="edge", password="pw-1"))
        svc.start()
        assert svc.connected.is_set()
        svc.close()
        secure = MQTTService(engine, mqtt_cfg(b.tls_port, tls={"ca_file": tls["ca"]},
                                              client_id="tls-1"))
        secure.start()
        p = MQTTProbe(b.tls_port, ca=tls["ca"])
        p.subscribe("c/tls")
        p.publish(REQ, {"prompt": "Hi", "max_tokens": 1}, response_topic="c/tls")
        assert p.get_json(120)["type"] == "final"
        p.close()
        secure.close()
    finally:
        b.stop()


def test_shared_subscription_splits_requests_between_two_engines(broker, make_engine, probe, default_model):
    # Two engines in this process stand in for two boards here, each with its own model (an
    # engine owns its model: two generating on one would race on its cache and buffers);
    # test_services_serve runs the same with two `serve` processes.
    from edgellm.runtime.generation import load_model

    svcs = []
    for node, model in (("b1", default_model), ("b2", load_model(default_model.path, n_ctx=1024))):
        engine = make_engine(node=node, queue_size=4, model=model)
        svc = MQTTService(engine, mqtt_cfg(broker.port, node=node, shared_group="boards"))
        svc.start()
        svcs.append(svc)
    try:
        p = probe()
        p.subscribe("c/shared")
        for i in range(6):
            p.publish(REQ, {"id": i, "prompt": "Hi", "max_tokens": 1},
                      response_topic="c/shared")
        replies = [p.get_json(180) for _ in range(6)]
        assert sorted(r["id"] for r in replies) == list(range(6))
        nodes = [r["stats"]["node"] for r in replies]
        assert set(nodes) == {"b1", "b2"}
        time.sleep(0.5)
        assert p.messages.empty()
    finally:
        for svc in svcs:
            svc.stop_accepting()
            svc.engine.stop()
            svc.close()
