"""HTTP transport through the official `openai` and `ollama` clients, on the real model."""

import http.client
import json
import socket
import time

import pytest
from services_fixtures import http_service, make_engine, wait_for  # noqa: F401

from edgellm.services.http_api import HTTPService

openai = pytest.importorskip("openai")
ollama = pytest.importorskip("ollama")

TOKEN = "test-token-123"




@pytest.fixture
def secured(make_engine):
    engine = make_engine()
    svc = HTTPService(engine, host="127.0.0.1", port=0, bearer_token=TOKEN)
    svc.start()
    yield svc
    svc.stop_accepting()
    engine.stop()
    svc.close()


def base(svc):
    return f"http://127.0.0.1:{svc.address[1]}"


def oai(svc, key="none"):
    return openai.OpenAI(base_url=base(svc) + "/v1", api_key=key, max_retries=0, timeout=120)


def raw(svc, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", svc.address[1], timeout=120)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    conn.request(method, path, body=data, headers=headers or {})
    resp = conn.getresponse()
    out = resp.status, resp.read()
    conn.close()
    return out


def test_openai_chat_completion(http_service):
    client = oai(http_service)
    r = client.chat.completions.create(model="anything", max_tokens=2, temperature=0,
                                       messages=[{"role": "user", "content": "Hi"}])
    assert r.object == "chat.completion" and r.model == http_service.model_name()
    choice = r.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert 1 <= r.usage.completion_tokens <= 2
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_openai_chat_streaming_matches_the_plain_reply(http_service):
    client = oai(http_service)
    kw = dict(model="m", max_tokens=3, temperature=0,
              messages=[{"role": "user", "content": "Say a colour."}])
    # Sent twice first: the streamed run and the second plain run then start from the same
    # cached prefix. (Batched prefill and a cached prefix differ in the last float bits,
    # which can flip a greedy choice between two near-equal tokens.)
    client.chat.completions.create(**kw)
    plain = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, stream_options={
        "include_usage": True}, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and all(f is None for f in finishes[:-1])
    assert chunks[-1].usage.completion_tokens >= 1 and chunks[-1].choices == []


def test_openai_completions_and_models(http_service):
    client = oai(http_service)
    for _ in range(2):   # twice: see test_openai_chat_streaming_matches_the_plain_reply
        r = client.completions.create(model="m", prompt="The sky is", max_tokens=2,
                                      temperature=0)
    assert r.object == "text_completion" and isinstance(r.choices[0].text, str)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="m", prompt="The sky is", max_tokens=2, temperature=0, stream=True))
    assert streamed == r.choices[0].text
    models = client.models.list()
    assert [m.id for m in models.data] == [http_service.model_name()]
    assert client.models.retrieve(http_service.model_name()).id == http_service.model_name()


def test_openai_json_schema_response_format(http_service):
    client = oai(http_service)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}},
              "required": ["ok"]}
    r = client.chat.completions.create(
        model="m", max_tokens=10, temperature=0,
        messages=[{"role": "user", "content": "Is water wet? Answer in JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "a",
                                                                "schema": schema}})
    value = json.loads(r.choices[0].message.content)
    assert set(value) == {"ok"} and isinstance(value["ok"], bool)


def test_openai_errors_carry_codes(http_service):
    client = oai(http_service)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", max_tokens=-1,
                                       messages=[{"role": "user", "content": "Hi"}])
    assert info.value.body["code"] == "bad_value" and info.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                       extra_body={"mystery": 1})
    assert info.value.body["code"] == "unknown_field"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


@pytest.mark.parametrize("body, status, code", [
    (b"{nope", 400, "bad_json"),
    (b'{"prompt": "\xff"}', 400, "bad_utf8"),
    (b"[1]", 400, "bad_json"),
    (b'{"prompt": "' + b"x" * 5000 + b'"}', 413, "too_large"),
])
def test_malformed_bodies(http_service, body, status, code):
    got, data = raw(http_service, "POST", "/v1/completions", body,
                    {"Content-Type": "application/json"})
    assert got == status and json.loads(data)["error"]["code"] == code


def test_unknown_path_and_health(http_service):
    status, data = raw(http_service, "GET", "/v2/nothing")
    assert status == 404 and json.loads(data)["code"] == "not_found"
    status, data = raw(http_service, "GET", "/health")
    health = json.loads(data)
    assert status == 200 and health["status"] == "ok"
    assert health["model"] == http_service.engine.model_name and "mem_rss_mb" in health


def test_ollama_generate_chat_and_tags(http_service):
    client = ollama.Client(host=base(http_service), timeout=120)
    name = http_service.model_name()
    tags = client.list()
    assert [m.model for m in tags.models] == [name]
    for _ in range(2):   # twice: see test_openai_chat_streaming_matches_the_plain_reply
        r = client.generate(model=name, prompt="Hi", options={"num_predict": 2,
                                                              "temperature": 0})
    assert r.done and r.done_reason in ("stop", "length") and 1 <= r.eval_count <= 2
    parts = list(client.generate(model=name, prompt="Hi", stream=True,
                                 options={"num_predict": 2, "temperature": 0}))
    assert parts[-1].done and all(not p.done for p in parts[:-1])
    assert "".join(p.response for p in parts) == r.response
    for _ in range(2):
        c = client.chat(model=name, messages=[{"role": "user", "content": "Hi"}],
                        options={"num_predict": 2, "temperature": 0})
    assert c.message.role == "assistant" and c.done
    streamed = list(client.chat(model=name, messages=[{"role": "user", "content": "Hi"}],
                                stream=True, options={"num_predict": 2, "temperature": 0}))
    assert "".join(p.message.content for p in streamed) == c.message.content


def test_ollama_json_format_and_errors(http_service):
    client = ollama.Client(host=base(http_service), timeout=120)
    name = http_service.model_name()
    digit = {"type": "integer", "minimum": 0, "maximum": 9}
    r = client.generate(model=name, prompt="Give a JSON object with a key a.",
                        format={"type": "object", "properties": {"a": digit},
                                "required": ["a"]},
                        options={"num_predict": 10, "temperature": 0})
    assert 0 <= json.loads(r.response)["a"] <= 9
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(model="llama3", prompt="Hi")
    assert info.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(model=name, prompt="Hi", options={"warp_drive": 9})
    assert info.value.status_code == 400 and "warp_drive" in info.value.error


def test_bearer_token_is_required_when_configured(secured):
    with pytest.raises(openai.AuthenticationError) as info:
        oai(secured, key="wrong").models.list()
    assert info.value.body["code"] == "unauthorized"
    assert [m.id for m in oai(secured, key=TOKEN).models.list().data] == [secured.model_name()]
    assert raw(secured, "GET", "/health")[0] == 200
    with pytest.raises(ollama.ResponseError) as info:
        ollama.Client(host=base(secured)).list()
    assert info.value.status_code == 401
    client = ollama.Client(host=base(secured), headers={"Authorization": f"Bearer {TOKEN}"})
    assert len(client.list().models) == 1


def test_busy_is_503_with_retry_after(make_engine):
    engine = make_engine(queue_size=0)
    svc = HTTPService(engine, port=0)
    svc.start()
    try:
        # One long request holds the engine; with no queue the next one is refused.
        s = socket.create_connection(svc.address)
        body = json.dumps({"prompt": "Tell a story.", "max_tokens": 300, "stream": True})
        s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}"
                  f"\r\n\r\n{body}".encode())
        s.settimeout(120)
        got = b""
        while b"data:" not in got:
            data = s.recv(65536)
            assert data, got
            got += data
        conn = http.client.HTTPConnection("127.0.0.1", svc.address[1], timeout=10)
        conn.request("POST", "/v1/completions", json.dumps({"prompt": "Hi"}))
        resp = conn.getresponse()
        assert resp.status == 503 and resp.getheader("Retry-After") == "1"
        assert json.loads(resp.read())["error"]["code"] == "busy"
        # Hanging up on the stream cancels it and frees the engine.
        s.close()
        wait_for(lambda: engine.counts["cancelled"] == 1, 60, what="stream cancelled")
    finally:
        svc.stop_accepting()
        engine.stop()
        svc.close()


def test_disconnect_while_waiting_for_a_plain_reply_cancels_it(http_service):
    engine = http_service.engine
    s = socket.create_connection(http_service.address)
    body = json.dumps({"prompt": "Tell a story.", "max_tokens": 300})
    s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}"
              f"\r\n\r\n{body}".encode())
    wait_for(lambda: engine.status()["state"] == "busy", 60, what="request running")
    time.sleep(0.3)
    s.close()
    wait_for(lambda: engine.counts["cancelled"] == 1, 60, what="request cancelled")


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"prompt": "Count: 1, 2, 3,", "max_tokens": 24, "stream": True,
                         "temperature": 0}),
    ("/api/generate", {"model": "", "prompt": "Count: 1, 2, 3,", "raw": True,
                       "options": {"num_predict": 24, "temperature": 0}}),
])
def test_streamed_chunks_reach_the_client_as_they_are_produced(http_service, path, body):
    if path.startswith("/api"):
        body["model"] = http_service.model_name()
    data = json.dumps(body)
    s = socket.create_connection(http_service.address, timeout=60)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n"
              f"{data}".encode())
    arrivals = []                       # (time, bytes) of each read
    got = b""
    end = time.monotonic() + 60
    while not got.endswith(b"0\r\n\r\n") and time.monotonic() < end:
        chunk = s.recv(65536)
        assert chunk, got
        arrivals.append(time.monotonic())
        got += chunk
    s.close()
    assert b"Transfer-Encoding: chunked" in got
    # A read per token or so, spread over the generation, not one burst at its end.
    assert len(arrivals) >= 10, len(arrivals)
    assert arrivals[-1] - arrivals[0] > 0.05
