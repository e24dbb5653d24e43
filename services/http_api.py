"""HTTP transport: OpenAI- and Ollama-compatible endpoints on the standard library.

    GET  /health                  200 {"status": "ok", ...}; 200 "degraded" while another
                                  adapter is down ("adapters" says which, and why); 503
                                  "unavailable" when the engine is stuck or stopping
    GET  /v1/models, /v1/models/<id>
    POST /v1/chat/completions     OpenAI chat; "stream": true -> Server-Sent Events
    POST /v1/completions          OpenAI legacy completions; SSE likewise
    GET  /api/tags, /api/ps, /api/version; POST /api/show
    POST /api/generate            Ollama; streams NDJSON unless "stream": false
    POST /api/chat                Ollama chat; likewise

`response_format` (OpenAI: json_object / json_schema) and `format` (Ollama: "json" or a
schema) become the engine's JSON-schema constraint; json_object and Ollama's "json" allow a
JSON object only, as OpenAI and Ollama do. Ollama's `num_predict` -1 ("until a stop") and -2
("fill the context") both generate until a stop or a full context, within the server's
engine.max_tokens ceiling (there is no context shifting here, so the two are the same).
The OpenAI endpoints accept any model name, as llama.cpp's server does (there is one
model); the Ollama endpoints want the served model's name, as Ollama does, and answer 404
otherwise.

A ThreadingHTTPServer gives each connection a thread, which only waits on its job's event
queue: generation itself stays on the engine's thread. A client that disconnects while
its request is queued or running has it cancelled (a failed write while streaming; a
peeked EOF on the socket while waiting for a non-streamed reply).

Bound to 127.0.0.1 unless configured; with a bearer token every path but / and /health
needs `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import hmac
import json
import logging
import queue
import re
import select
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from urllib.parse import unquote
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from edgellm.services.engine import Job, RequestEngine
from edgellm.services.protocol import ServiceError, parse_request
from edgellm.services.system_status import system_status

log = logging.getLogger(__name__)

_STATUS = {"bad_json": 400, "bad_utf8": 400, "too_large": 413, "missing_field": 400,
           "unknown_field": 400, "bad_field": 400, "bad_value": 400, "prompt_too_long": 400,
           "busy": 503, "shutting_down": 503, "deadline": 504, "cancelled": 499,
           "unauthorized": 401, "not_found": 404, "internal": 500, "bad_frame": 400,
           "json_incomplete": 500}

# OpenAI parameters accepted and ignored: they do not change what one local model returns.
_OPENAI_IGNORED = {"model", "user", "store", "metadata", "service_tier", "parallel_tool_calls",
                   "stream_options", "logit_bias", "prompt_cache_key", "safety_identifier"}
_OLLAMA_LOAD_OPTIONS = {"numa", "num_ctx", "num_batch", "num_gpu", "main_gpu", "low_vram",
                        "f16_kv", "logits_all", "vocab_only", "use_mmap", "use_mlock",
                        "embedding_only", "num_thread", "num_keep"}
_OLLAMA_SAMPLING = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p",
                    "min_p": "min_p", "repeat_penalty": "repeat_penalty",
                    "repeat_last_n": "repeat_last_n", "seed": "seed", "stop": "stop"}
_OLLAMA_UNSUPPORTED = {"tfs_z", "typical_p", "presence_penalty", "frequency_penalty",
                       "mirostat", "mirostat_tau", "mirostat_eta", "penalize_newline"}


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class JobEvents:
    """A job's sink for a handler thread: the engine puts, the handler takes."""

    def __init__(self):
        self.q: queue.Queue = queue.Queue()

    def __call__(self, job: Job, message: dict) -> None:
        self.q.put(message)


class HTTPService:
    name = "http"

    def __init__(self, engine: RequestEngine, host: str = "127.0.0.1", port: int = 8080,
                 bearer_token: str | None = None, max_body_bytes: int = 1 << 20):
        self.engine = engine
        self.bearer_token = bearer_token
        self.max_body_bytes = max_body_bytes
        self.created = int(time.time())
        handler = type("Handler", (_Handler,), {"service": self})
        self.server = ThreadingHTTPServer((host, port), handler, bind_and_activate=False)
        self.server.daemon_threads = True
        self.server.allow_reuse_address = True
        self._host, self._port = host, port
        self._thread: threading.Thread | None = None
        self.accepting = True
        self._in_flight = 0                 # jobs whose reply is still being written
        self._in_flight_cond = threading.Condition()

    @property
    def address(self) -> tuple[str, int]:
        return self.server.server_address[:2]

    def start(self) -> None:
        try:
            self.server.server_bind()
            self.server.server_activate()
        except OSError as exc:
            self.server.server_close()
            raise OSError(f"cannot listen on http {self._host}:{self._port}: {exc}") from None
        log.info("http: listening on %s:%d", *self.address)
        self._thread = threading.Thread(target=self.server.serve_forever, name="http",
                                        kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()

    def stop_accepting(self) -> None:
        self.accepting = False
        self.server.shutdown()            # no new connections are accepted after this

    def close(self, timeout: float = 2.0) -> None:
        """Waits up to `timeout` for replies being written (the engine has already ended
        their jobs when the service stops), then closes the listening socket."""
        if self.accepting:
            self.stop_accepting()
        end = time.monotonic() + timeout
        with self._in_flight_cond:
            while self._in_flight and time.monotonic() < end:
                self._in_flight_cond.wait(max(0.0, end - time.monotonic()))
        self.server.server_close()

    def _job_started(self) -> None:
        with self._in_flight_cond:
            self._in_flight += 1

    def _job_ended(self) -> None:
        with self._in_flight_cond:
            self._in_flight -= 1
            self._in_flight_cond.notify_all()

    # -- model description --------------------------------------------------------------------

    def model_name(self) -> str:
        """The model's id on the API: its name as a slug ("Gemma 3 270m" -> gemma-3-270m),
        since clients put it in URLs and Ollama-style names have no spaces."""
        return re.sub(r"[^a-z0-9._:-]+", "-", self.engine.model_name.lower()).strip("-") \
            or "model"

    def ollama_model(self) -> dict:
        model = self.engine.model
        path = getattr(model, "path", None)
        size = 0
        modified = _now_iso()
        try:
            st = path.stat()
            size = st.st_size
            modified = datetime.fromtimestamp(st.st_mtime, timezone.utc).isoformat()
        except (AttributeError, OSError):
            pass
        arch = getattr(model, "arch", "")
        return {"name": self.model_name(), "model": self.model_name(), "modified_at": modified,
                "size": size,
                "details": {"format": "gguf", "family": arch, "families": [arch],
                            "parameter_size": "", "quantization_level": ""}}


class _Handler(BaseHTTPRequestHandler):
    service: HTTPService
    protocol_version = "HTTP/1.1"
    server_version = "edgellm"

    def log_message(self, fmt, *args):
        log.debug("http: %s " + fmt, self.address_string(), *args)

    # -- plumbing -----------------------------------------------------------------------------

    def _send_json(self, status: int, obj, headers: dict | None = None) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, err: ServiceError, flavour: str) -> None:
        status = _STATUS[err.code]
        headers = {"Retry-After": "1"} if err.code in ("busy", "shutting_down") else None
        if flavour == "openai":
            kind = ("invalid_request_error" if status in (400, 404, 413) else
                    "authentication_error" if status == 401 else "server_error")
            body = {"error": {"message": err.message, "type": kind, "param": err.field,
                              "code": err.code}}
        else:
            body = {"error": err.message, "code": err.code}
        if not self._consumed:
            # The request body is still unread; it must not be parsed as the next request.
            self.close_connection = True
        try:
            self._send_json(status, body, headers)
        except OSError:
            # The client left (that is often why the job was cancelled): nobody to tell.
            self.close_connection = True

    def _flavour(self) -> str:
        return "openai" if self.path.startswith("/v1") else "ollama"

    def _authorized(self) -> bool:
        token = self.service.bearer_token
        if token is None or self.path.split("?")[0] in ("/", "/health"):
            return True
        given = self.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(),
                                                                   token.encode())

    def _body(self) -> dict:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise ServiceError("bad_value", "send the body with a Content-Length")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            self.close_connection = True
            raise ServiceError("bad_value", "Content-Length is not a number") from None
        if length > self.service.max_body_bytes:
            self.close_connection = True   # the body stays unread
            raise ServiceError("too_large", f"body is {length} bytes; the limit is "
                               f"{self.service.max_body_bytes}")
        raw = self.rfile.read(length)
        self._consumed = True
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ServiceError("bad_utf8", f"body is not UTF-8 (byte {exc.start})") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ServiceError("bad_json", f"body is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ServiceError("bad_json", "body must be a JSON object")
        return obj

    def _client_gone(self) -> bool:
        """True once the peer has closed its end (EOF peeked without consuming anything)."""
        sock = self.connection
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            return sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    # -- dispatch -----------------------------------------------------------------------------

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_HEAD(self):
        path = self.path.split("?")[0].rstrip("/") or "/"
        ok = path == "/" or path == "/health" and self.service.engine.is_healthy()
        self.send_response(200 if ok or path == "/" else 503 if path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?")[0].rstrip("/") or "/"
        # Whether the body (if any) has been read off the connection yet.
        self._consumed = (self.headers.get("Content-Length") or "0").strip() == "0" and \
            "chunked" not in self.headers.get("Transfer-Encoding", "").lower()
        flavour = self._flavour()
        route = _ROUTES.get((method, path))
        if route is None and method == "GET" and path.startswith("/v1/models/"):
            route = _Handler._get_model
        tracked = route in _JOB_ROUTES
        if tracked:
            # Counted until the reply, error or not, is written: close() waits for these.
            self.service._job_started()
        try:
            if not self._authorized():
                raise ServiceError("unauthorized", "missing or wrong bearer token")
            if route is None:
                if any(p == path for _, p in _ROUTES):
                    raise ServiceError("not_found", f"{method} is not allowed on {path}")
                raise ServiceError("not_found", f"no endpoint {method} {path}")
            route(self)
        except ServiceError as err:
            self._error(err, flavour)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:
            log.exception("http: %s %s failed", method, path)
            self._error(ServiceError("internal", f"internal error: {type(exc).__name__}"),
                        flavour)
        finally:
            if tracked:
                self.service._job_ended()

    # -- simple endpoints ---------------------------------------------------------------------

    def _root(self):
        body = b"edgellm is running"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _health(self):
        engine = self.service.engine
        status = {**engine.status(), **system_status()}
        healthy = status["healthy"] and self.service.accepting
        all_up = all(state == "ok" for state in status["adapters"].values())
        status["status"] = "unavailable" if not healthy else "ok" if all_up else "degraded"
        self._send_json(200 if healthy else 503, status)

    def _models(self):
        self._send_json(200, {"object": "list", "data": [self._model_object()]})

    def _model_object(self) -> dict:
        return {"id": self.service.model_name(), "object": "model",
                "created": self.service.created, "owned_by": "edgellm"}

    def _get_model(self):
        name = unquote(self.path.split("?")[0][len("/v1/models/"):])
        if name != self.service.model_name():
            raise ServiceError("not_found", f"model {name!r} is not served here; this server "
                               f"serves {self.service.model_name()!r}", "model")
        self._send_json(200, self._model_object())

    def _tags(self):
        self._send_json(200, {"models": [self.service.ollama_model()]})

    def _ps(self):
        m = self.service.ollama_model()
        m.update(size_vram=0, expires_at="2999-01-01T00:00:00Z",
                 context_length=getattr(self.service.engine.model, "n_ctx", 0))
        self._send_json(200, {"models": [m]})

    def _version(self):
        try:
            from importlib.metadata import version
            v = version("edgellm")
        except Exception:
            v = "0.1.0"
        self._send_json(200, {"version": v})

    def _show(self):
        body = self._body()
        self._check_ollama_model(body.get("model") or body.get("name"))
        m = self.service.ollama_model()
        self._send_json(200, {"modelfile": "", "parameters": "", "template": "",
                              "details": m["details"], "model_info": {
                                  "general.architecture": m["details"]["family"],
                                  "context_length": getattr(self.service.engine.model,
                                                            "n_ctx", 0)},
                              "modified_at": m["modified_at"]})

    def _check_ollama_model(self, name) -> None:
        served = self.service.model_name()
        if not isinstance(name, str) or not name:
            raise ServiceError("missing_field", "model is required", "model")
        if name not in (served, served + ":latest", self.service.engine.model_name):
            raise ServiceError("not_found", f"model {name!r} not found; this server serves "
                               f"{served!r} (see /api/tags)", "model")

    # -- running a job ------------------------------------------------------------------------

    def _submit(self, obj: dict):
        if not self.service.accepting:
            raise ServiceError("shutting_down", "the service is stopping")
        request, _ = parse_request(obj, self.service.engine.limits)
        events = JobEvents()
        job = self.service.engine.submit(request, events, client=f"http {self.client_address[0]}")
        return job, events

    def _wait(self, job: Job, events: JobEvents):
        """Yields the job's messages; cancels the job if the client disconnects."""
        while True:
            try:
                message = events.q.get(timeout=0.25)
            except queue.Empty:
                if self._client_gone():
                    self.service.engine.cancel(job)
                    self.close_connection = True
                continue
            yield message
            if message["type"] != "chunk":
                return

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _stream_write(self, job: Job, data: bytes) -> bool:
        try:
            self.wfile.write(data)
            self.wfile.flush()
            return True
        except OSError:
            self.service.engine.cancel(job)
            return False

    # -- OpenAI -------------------------------------------------------------------------------

    def _openai_common(self, body: dict, allowed: set) -> dict:
        for key in body:
            if key not in allowed and key not in _OPENAI_IGNORED:
                raise ServiceError("unknown_field", f"unsupported parameter {key!r}", key)
        if body.get("n") not in (None, 1):
            raise ServiceError("bad_value", "only n=1 is supported", "n")
        for key in ("frequency_penalty", "presence_penalty"):
            if body.get(key) not in (None, 0, 0.0):
                raise ServiceError("bad_value", f"{key} is not supported; use repeat_penalty",
                                   key)
        if body.get("logprobs") or body.get("top_logprobs") or body.get("echo"):
            raise ServiceError("bad_value", "logprobs and echo are not supported")
        req = {}
        for ours, theirs in (("max_tokens", "max_completion_tokens"),
                             ("max_tokens", "max_tokens"), ("temperature", "temperature"),
                             ("top_p", "top_p"), ("top_k", "top_k"), ("min_p", "min_p"),
                             ("repeat_penalty", "repeat_penalty"), ("seed", "seed"),
                             ("stop", "stop"), ("stream", "stream")):
            if body.get(theirs) is not None:
                req[ours] = body[theirs]
        if isinstance(req.get("temperature"), (int, float)) and req["temperature"] > 2:
            raise ServiceError("bad_value", "temperature must be in [0, 2]", "temperature")
        fmt = body.get("response_format")
        if fmt is not None:
            if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object",
                                                                   "json_schema"):
                raise ServiceError("bad_value", "response_format.type must be text, "
                                   "json_object or json_schema", "response_format")
            if fmt["type"] == "json_object":
                req["schema"] = {"type": "object"}
            elif fmt["type"] == "json_schema":
                spec = fmt.get("json_schema")
                if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}),
                                                                (dict, bool)):
                    raise ServiceError("bad_value", "response_format.json_schema.schema must "
                                       "be a JSON schema object", "response_format")
                req["schema"] = spec.get("schema", {})
        return req

    def _chat_completions(self):
        body = self._body()
        req = self._openai_common(body, {
            "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
            "min_p", "repeat_penalty", "seed", "stop", "stream", "n", "response_format",
            "frequency_penalty", "presence_penalty", "logprobs", "top_logprobs"})
        messages = body.get("messages")
        if isinstance(messages, list):
            messages = [dict(m, role="system") if isinstance(m, dict) and
                        m.get("role") == "developer" else m for m in messages]
        req["messages"] = messages
        self._openai_run(req, body, chat=True)

    def _completions(self):
        body = self._body()
        req = self._openai_common(body, {
            "prompt", "max_tokens", "temperature", "top_p", "top_k", "min_p",
            "repeat_penalty", "seed", "stop", "stream", "n", "response_format", "echo",
            "frequency_penalty", "presence_penalty", "logprobs", "suffix", "best_of"})
        if body.get("suffix") or body.get("best_of") not in (None, 1):
            raise ServiceError("bad_value", "suffix and best_of are not supported")
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ServiceError("bad_field", "prompt must be a string", "prompt")
        req["prompt"] = prompt
        req.setdefault("max_tokens", 16)   # OpenAI's default for completions
        self._openai_run(req, body, chat=False)

    def _openai_run(self, req: dict, body: dict, chat: bool) -> None:
        job, events = self._submit(req)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        model = self.service.model_name()
        obj_kind = "chat.completion" if chat else "text_completion"

        def usage(stats):
            return {"prompt_tokens": stats["prompt_tokens"],
                    "completion_tokens": stats["completion_tokens"],
                    "total_tokens": stats["prompt_tokens"] + stats["completion_tokens"]}

        def finish_of(message):
            # A JSON reply cut short is an OpenAI "length" finish, as in OpenAI's own API.
            return "length" if message.get("code") == "json_incomplete" else \
                message.get("finish_reason", "stop")

        if not job.request.stream:
            for message in self._wait(job, events):
                pass
            if message["type"] == "error" and message["code"] != "json_incomplete":
                raise ServiceError(message["code"], message["message"])
            text, stats = message.get("text", ""), message["stats"]
            choice = ({"index": 0, "message": {"role": "assistant", "content": text},
                       "finish_reason": finish_of(message), "logprobs": None} if chat else
                      {"index": 0, "text": text, "finish_reason": finish_of(message),
                       "logprobs": None})
            self._send_json(200, {"id": rid, "object": obj_kind, "created": created,
                                  "model": model, "choices": [choice], "usage": usage(stats),
                                  "system_fingerprint": None})
            return

        chunk_kind = "chat.completion.chunk" if chat else "text_completion"

        def event(choice=None, **extra):
            payload = {"id": rid, "object": chunk_kind, "created": created, "model": model,
                       "choices": [choice] if choice is not None else [], **extra}
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

        def delta(text=None, finish=None, role=False):
            if chat:
                d = {"role": "assistant", "content": ""} if role else (
                    {"content": text} if text is not None else {})
                return {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}
            return {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self._start_stream("text/event-stream")
        if chat and not self._stream_write(job, event(delta(role=True))):
            return
        for message in self._wait(job, events):
            if message["type"] == "chunk":
                if not self._stream_write(job, event(delta(message["text"]))):
                    return
            elif message["type"] == "final" or message.get("code") == "json_incomplete":
                self._stream_write(job, event(delta(finish=finish_of(message))))
                if include_usage:
                    self._stream_write(job, event(None, usage=usage(message["stats"])))
                self._stream_write(job, b"data: [DONE]\n\n")
            else:
                err = {"error": {"message": message["message"], "type": "server_error",
                                 "param": None, "code": message["code"]}}
                self._stream_write(job, b"data: " + json.dumps(err).encode() + b"\n\n")

    # -- Ollama -------------------------------------------------------------------------------

    def _ollama_request(self, body: dict, allowed: set) -> dict:
        for key in body:
            if key not in allowed:
                raise ServiceError("unknown_field", f"unsupported field {key!r}", key)
        self._check_ollama_model(body.get("model"))
        if body.get("images"):
            raise ServiceError("bad_value", "images are not supported by this model", "images")
        req = {"stream": body.get("stream", True)}
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise ServiceError("bad_field", "options must be an object", "options")
        for key, value in options.items():
            if value is None or key in _OLLAMA_LOAD_OPTIONS:
                continue
            if key in _OLLAMA_SAMPLING:
                req[_OLLAMA_SAMPLING[key]] = value
            elif key == "num_predict":
                if value in (-1, -2) and not isinstance(value, bool):
                    # Ollama's "until a stop" (-1) and "fill the context" (-2): the runtime
                    # stops at a stop or a full context, so both ask for the most a request
                    # may have (engine.max_tokens), not the default.
                    value = self.service.engine.limits.max_tokens
                req["max_tokens"] = value
            elif key in _OLLAMA_UNSUPPORTED:
                log.debug("http: ignoring unsupported Ollama option %s", key)
            else:
                raise ServiceError("unknown_field", f"unknown option {key!r}", f"options.{key}")
        fmt = body.get("format")
        if fmt == "json":
            # Ollama's JSON mode answers with an object, never a bare number or string.
            req["schema"] = {"type": "object"}
        elif isinstance(fmt, dict):
            req["schema"] = fmt
        elif fmt not in (None, ""):
            raise ServiceError("bad_value", 'format must be "json" or a JSON schema', "format")
        return req

    def _ollama_generate(self):
        body = self._body()
        req = self._ollama_request(body, {"model", "prompt", "suffix", "system", "template",
                                          "context", "stream", "raw", "format", "images",
                                          "options", "keep_alive", "think"})
        if body.get("suffix") or body.get("template") or body.get("context"):
            raise ServiceError("bad_value", "suffix, template and context are not supported")
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise ServiceError("bad_field", "prompt must be a string", "prompt")
        if not prompt:
            # Ollama's "load the model" call: nothing to generate.
            self._send_json(200, {"model": self.service.model_name(), "created_at": _now_iso(),
                                  "response": "", "done": True, "done_reason": "load"})
            return
        if body.get("raw"):
            req["prompt"] = prompt
        else:
            system = body.get("system")
            req["messages"] = ([{"role": "system", "content": system}] if system else []) + \
                [{"role": "user", "content": prompt}]
        self._ollama_run(req, chat=False)

    def _ollama_chat(self):
        body = self._body()
        req = self._ollama_request(body, {"model", "messages", "stream", "format", "options",
                                          "keep_alive", "tools", "think"})
        if body.get("tools"):
            raise ServiceError("bad_value", "tools are not supported", "tools")
        messages = body.get("messages")
        if isinstance(messages, list):
            cleaned = []
            for m in messages:
                if isinstance(m, dict):
                    if m.get("images"):
                        raise ServiceError("bad_value", "images are not supported", "messages")
                    m = {k: v for k, v in m.items() if k in ("role", "content")}
                cleaned.append(m)
            messages = cleaned
        req["messages"] = messages
        self._ollama_run(req, chat=True)

    def _ollama_run(self, req: dict, chat: bool) -> None:
        job, events = self._submit(req)
        model = self.service.model_name()
        t0 = time.monotonic_ns()

        def piece(text):
            out = {"model": model, "created_at": _now_iso(), "done": False}
            if chat:
                out["message"] = {"role": "assistant", "content": text}
            else:
                out["response"] = text
            return out

        def final(message):
            stats = message["stats"]
            out = piece(message.get("text", "") if not job.request.stream else "")
            out.update(done=True,
                       done_reason="length" if message.get("code") == "json_incomplete"
                       else message.get("finish_reason", "stop"),
                       total_duration=time.monotonic_ns() - t0, load_duration=0,
                       prompt_eval_count=stats["prompt_tokens"],
                       prompt_eval_duration=int(stats["prompt_ms"] * 1e6),
                       eval_count=stats["completion_tokens"],
                       eval_duration=int(stats["generate_ms"] * 1e6))
            if not chat:
                out["context"] = []
            return out

        if not job.request.stream:
            for message in self._wait(job, events):
                pass
            if message["type"] == "error" and message["code"] != "json_incomplete":
                raise ServiceError(message["code"], message["message"])
            self._send_json(200, final(message))
            return
        self._start_stream("application/x-ndjson")
        for message in self._wait(job, events):
            if message["type"] == "chunk":
                line = piece(message["text"])
            elif message["type"] == "final" or message.get("code") == "json_incomplete":
                line = final(message)
            else:
                line = {"error": message["message"], "code": message["code"]}
            if not self._stream_write(job, json.dumps(line).encode() + b"\n"):
                return


_ROUTES = {
    ("GET", "/"): _Handler._root,
    ("GET", "/health"): _Handler._health,
    ("GET", "/v1/models"): _Handler._models,
    ("POST", "/v1/chat/completions"): _Handler._chat_completions,
    ("POST", "/v1/completions"): _Handler._completions,
    ("GET", "/api/tags"): _Handler._tags,
    ("GET", "/api/ps"): _Handler._ps,
    ("GET", "/api/version"): _Handler._version,
    ("POST", "/api/show"): _Handler._show,
    ("POST", "/api/generate"): _Handler._ollama_generate,
    ("POST", "/api/chat"): _Handler._ollama_chat,
}
_JOB_ROUTES = {_Handler._chat_completions, _Handler._completions, _Handler._ollama_generate,
               _Handler._ollama_chat}
