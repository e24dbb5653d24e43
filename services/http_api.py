"""HTTP transport: OpenAI- and Ollama-compatible endpoints, served by waitress.

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

HTTP itself is waitress's (pure Python, one I/O thread, a fixed pool of worker threads):
it parses and frames requests, refuses a bad Content-Length or Transfer-Encoding with 400
and a body over max_body_bytes with 413 before reading it (those errors get our JSON error
shape through _FramingError), closes a connection idle for idle_timeout_s (headers never
finished, a body shorter than its Content-Length, a kept-alive connection), and stops
accepting at max_connections. A worker thread answers one request and only waits on its
job's event queue: generation itself stays on the engine's thread. Each streamed chunk is
handed to the socket as it is produced (waitress flushes every write: send_bytes = 1). A
client that disconnects while its request is queued or running has it cancelled: waitress
keeps reading the connection while a request runs (channel_request_lookahead), notices
the hang-up, and the reply polls waitress.client_disconnected.

Bound to 127.0.0.1 unless configured; with a bearer token every path but / and /health
needs `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import hmac
import json
import logging
import queue
import re
import threading
import time
import uuid
from datetime import datetime, timezone
from http import HTTPStatus

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import create_server
from waitress.task import ErrorTask

from edgellm.services.engine import Job, RequestEngine
from edgellm.services.protocol import ServiceError, decode_payload, parse_request
from edgellm.services.system_status import system_status

log = logging.getLogger(__name__)

_STATUS = {"bad_json": 400, "bad_utf8": 400, "too_large": 413, "missing_field": 400,
           "unknown_field": 400, "bad_field": 400, "bad_value": 400, "prompt_too_long": 400,
           "busy": 503, "shutting_down": 503, "deadline": 504, "cancelled": 499,
           "unauthorized": 401, "not_found": 404, "internal": 500, "bad_frame": 400,
           "json_incomplete": 500}

# Request headers beyond this get 431: clients send a few hundred bytes.
MAX_HEADER_BYTES = 16384
# Bytes a connection buffers in memory each way; more goes to a temporary file
# (64 KiB x 2 x max_connections at most; devices/planner.py notes it).
CONNECTION_BUFFER_BYTES = 65536

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


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Client Closed Request"     # 499, nginx's code for a cancel


def _error_body(err: ServiceError, path: str) -> dict:
    """The error shape each client family expects: OpenAI's under /v1, Ollama's elsewhere."""
    status = _STATUS[err.code]
    if path.startswith("/v1"):
        kind = ("invalid_request_error" if status in (400, 404, 413) else
                "authentication_error" if status == 401 else "server_error")
        return {"error": {"message": err.message, "type": kind, "param": err.field,
                          "code": err.code}}
    return {"error": err.message, "code": err.code}


class _FramingError(ErrorTask):
    """waitress's answer to a request it could not frame (bad Content-Length or
    Transfer-Encoding, headers or body over the limit), in our JSON error shape; the
    connection is closed after it, as waitress does."""

    def execute(self):
        error = self.request.error
        code = "too_large" if error.code in (413, 431) else "bad_frame"
        message = (f"request body is over the limit of {self.channel.server.max_body_bytes} "
                   f"bytes" if error.code == 413 else
                   f"request headers are over the limit of {MAX_HEADER_BYTES} bytes"
                   if error.code == 431 else f"bad HTTP request: {error.body}")
        # The request line, if waitress got that far, says which error shape to use.
        target = (getattr(self.request, "first_line", None) or b"").split(b" ")[1:2]
        path = target[0].decode("latin-1") if target else ""
        body = json.dumps(_error_body(ServiceError(code, message), path)).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _Channel(HTTPChannel):
    error_task_class = _FramingError


class JobEvents:
    """A job's sink for a worker thread: the engine puts, the worker takes."""

    def __init__(self):
        self.q: queue.Queue = queue.Queue()

    def __call__(self, job: Job, message: dict) -> None:
        self.q.put(message)


class _Reply:
    """A WSGI response body; waitress calls close() when it is written or the client left,
    which runs `on_close` (whether or not iteration ever started)."""

    def __init__(self, chunks, on_close=None):
        self.chunks = chunks
        self.on_close = on_close

    def __iter__(self):
        return iter(self.chunks)

    def close(self):
        try:
            if hasattr(self.chunks, "close"):
                self.chunks.close()
        finally:
            if self.on_close:
                self.on_close()


class HTTPService:
    name = "http"

    def __init__(self, engine: RequestEngine, host: str = "127.0.0.1", port: int = 8080,
                 bearer_token: str | None = None, max_body_bytes: int = 1 << 20,
                 idle_timeout_s: float = 20.0, max_connections: int = 64, threads: int = 16):
        self.engine = engine
        self.bearer_token = bearer_token
        self.max_body_bytes = max_body_bytes
        self.created = int(time.time())
        try:
            self.server = create_server(
                self._wsgi, host=host, port=port, ident="edgellm", threads=threads,
                connection_limit=max_connections, channel_timeout=idle_timeout_s,
                # Idle connections are looked for this often, so one lives at most
                # idle_timeout_s plus a quarter of it.
                cleanup_interval=max(0.5, idle_timeout_s / 4),
                # waitress refuses a body of max_request_body_size bytes or more.
                max_request_body_size=max_body_bytes + 1,
                max_request_header_size=MAX_HEADER_BYTES,
                # What a connection holds in memory before waitress spills it to a
                # temporary file: a body on its way in, a reply on its way out.
                inbuf_overflow=CONNECTION_BUFFER_BYTES, outbuf_overflow=CONNECTION_BUFFER_BYTES,
                channel_request_lookahead=1, asyncore_use_poll=True,
                clear_untrusted_proxy_headers=True)
        except OSError as exc:
            raise OSError(f"cannot listen on http {host}:{port}: {exc}") from None
        self.server.channel_class = _Channel
        self.server.max_body_bytes = max_body_bytes
        self._thread: threading.Thread | None = None
        self.accepting = True
        self._in_flight = 0                 # jobs whose reply is still being written
        self._in_flight_cond = threading.Condition()

    @property
    def address(self) -> tuple[str, int]:
        return self.server.effective_host, int(self.server.effective_port)

    def start(self) -> None:
        log.info("http: listening on %s:%d", *self.address)
        self._thread = threading.Thread(target=self.server.run, name="http", daemon=True)
        self._thread.start()

    def stop_accepting(self) -> None:
        if not self.accepting:
            return
        self.accepting = False
        # The listening socket is closed on the I/O thread; open connections go on.
        self._on_io_thread(lambda: wasyncore.dispatcher.close(self.server))

    def close(self, timeout: float = 2.0) -> None:
        """Waits up to `timeout` for replies being written (the engine has already ended
        their jobs when the service stops), then closes every connection and the workers."""
        if self.accepting:
            self.stop_accepting()
        end = time.monotonic() + timeout
        with self._in_flight_cond:
            while self._in_flight and time.monotonic() < end:
                self._in_flight_cond.wait(max(0.0, end - time.monotonic()))
        self._on_io_thread(lambda: wasyncore.close_all(self.server._map))
        if self._thread is not None:
            self._thread.join(timeout)
        self.server.task_dispatcher.shutdown(timeout=timeout)

    def _on_io_thread(self, thunk) -> None:
        if self._thread is not None and self._thread.is_alive():
            try:
                self.server.trigger.pull_trigger(thunk)
                return
            except OSError as exc:
                # The loop's wake-up pipe is gone (seen once in CI, EBADF): nothing can wake
                # the I/O thread any more, so the closing is done from here.
                log.warning("http: cannot wake the I/O thread (%s); closing from %s", exc,
                            threading.current_thread().name)
        thunk()

    def _job_started(self) -> None:
        with self._in_flight_cond:
            self._in_flight += 1

    def _job_ended(self) -> None:
        with self._in_flight_cond:
            self._in_flight -= 1
            self._in_flight_cond.notify_all()

    def _wsgi(self, environ, start_response):
        status, headers, reply = _Exchange(self, environ).respond()
        start_response(_status_line(status), headers)
        return reply

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


class _Exchange:
    """One request and the reply to it, on a waitress worker thread."""

    service: HTTPService

    def __init__(self, service: HTTPService, environ: dict):
        self.service = service
        self.environ = environ
        self.method = environ["REQUEST_METHOD"]
        # PATH_INFO is the percent-decoded path as latin-1 (WSGI); back to UTF-8 text.
        self.path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace")
        self._client_gone = environ.get("waitress.client_disconnected", lambda: False)

    # -- plumbing -----------------------------------------------------------------------------

    def _send_json(self, status: int, obj, headers: dict | None = None):
        body = json.dumps(obj).encode()
        return (status, [("Content-Type", "application/json"),
                         ("Content-Length", str(len(body))), *(headers or {}).items()],
                [body])

    def _error(self, err: ServiceError):
        headers = {"Retry-After": "1"} if err.code in ("busy", "shutting_down") else None
        return self._send_json(_STATUS[err.code], _error_body(err, self.path), headers)

    def _authorized(self) -> bool:
        token = self.service.bearer_token
        if token is None or self.path in ("/", "/health"):
            return True
        given = self.environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, value = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(),
                                                                   token.encode())

    def _body(self) -> dict:
        # waitress has framed the body (Content-Length or chunked) and held it to
        # max_body_bytes; decode_payload is the JSON check every transport shares.
        length = int(self.environ.get("CONTENT_LENGTH") or 0)
        obj = decode_payload(self.environ["wsgi.input"].read(length),
                             self.service.max_body_bytes)
        if not isinstance(obj, dict):
            raise ServiceError("bad_json", "body must be a JSON object")
        return obj

    # -- dispatch -----------------------------------------------------------------------------

    def respond(self):
        """(status, headers, body iterable) for this request."""
        if self.method == "HEAD":
            path = self.path.rstrip("/") or "/"
            ok = path == "/" or path == "/health" and self.service.engine.is_healthy()
            status = 200 if ok else 503 if path == "/health" else 404
            return status, [("Content-Length", "0")], []
        route = self._route()
        if route not in _JOB_ROUTES:
            return self._run(route)
        # Counted until the reply, error or not, is written: close() waits for these.
        self.service._job_started()
        try:
            status, headers, body = self._run(route)
        except BaseException:
            self.service._job_ended()
            raise
        if not isinstance(body, _Reply):
            body = _Reply(body)
        on_close = body.on_close

        def ended():
            try:
                if on_close:
                    on_close()
            finally:
                self.service._job_ended()
        body.on_close = ended
        return status, headers, body

    def _route(self):
        path = self.path.rstrip("/") or "/"
        route = _ROUTES.get((self.method, path))
        if route is None and self.method == "GET" and path.startswith("/v1/models/"):
            route = _Exchange._get_model
        return route

    def _run(self, route):
        path = self.path.rstrip("/") or "/"
        try:
            if not self._authorized():
                raise ServiceError("unauthorized", "missing or wrong bearer token")
            if route is None:
                if any(p == path for _, p in _ROUTES):
                    raise ServiceError("not_found", f"{self.method} is not allowed on {path}")
                raise ServiceError("not_found", f"no endpoint {self.method} {path}")
            return route(self)
        except ServiceError as err:
            return self._error(err)
        except Exception as exc:
            log.exception("http: %s %s failed", self.method, path)
            return self._error(ServiceError("internal",
                                            f"internal error: {type(exc).__name__}"))

    # -- simple endpoints ---------------------------------------------------------------------

    def _root(self):
        body = b"edgellm is running"
        return 200, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))], [body]

    def _health(self):
        engine = self.service.engine
        status = {**engine.status(), **system_status()}
        healthy = status["healthy"] and self.service.accepting
        all_up = all(state == "ok" for state in status["adapters"].values())
        status["status"] = "unavailable" if not healthy else "ok" if all_up else "degraded"
        return self._send_json(200 if healthy else 503, status)

    def _models(self):
        return self._send_json(200, {"object": "list", "data": [self._model_object()]})

    def _model_object(self) -> dict:
        return {"id": self.service.model_name(), "object": "model",
                "created": self.service.created, "owned_by": "edgellm"}

    def _get_model(self):
        name = self.path[len("/v1/models/"):]
        if name != self.service.model_name():
            raise ServiceError("not_found", f"model {name!r} is not served here; this server "
                               f"serves {self.service.model_name()!r}", "model")
        return self._send_json(200, self._model_object())

    def _tags(self):
        return self._send_json(200, {"models": [self.service.ollama_model()]})

    def _ps(self):
        m = self.service.ollama_model()
        m.update(size_vram=0, expires_at="2999-01-01T00:00:00Z",
                 context_length=getattr(self.service.engine.model, "n_ctx", 0))
        return self._send_json(200, {"models": [m]})

    def _version(self):
        try:
            from importlib.metadata import version
            v = version("edgellm")
        except Exception:
            v = "0.1.0"
        return self._send_json(200, {"version": v})

    def _show(self):
        body = self._body()
        self._check_ollama_model(body.get("model") or body.get("name"))
        m = self.service.ollama_model()
        return self._send_json(200, {"modelfile": "", "parameters": "", "template": "",
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
        job = self.service.engine.submit(request, events, 
                                         client=f"http {self.environ.get('REMOTE_ADDR')}")
        return job, events

    def _wait(self, job: Job, events: JobEvents):
        """Yields the job's messages; cancels the job if the client disconnects."""
        while True:
            try:
                message = events.q.get(timeout=0.25)
            except queue.Empty:
                if self._client_gone():
                    # Its terminal message (cancelled) follows at once.
                    self.service.engine.cancel(job)
                continue
            yield message
            if message["type"] != "chunk":
                return

    def _stream(self, job: Job, content_type: str, chunks):
        """A 200 whose body is `chunks`, each sent as it is produced (chunked encoding);
        the job is cancelled if the reply ends early (the client left)."""
        headers = [("Content-Type", content_type), ("Cache-Control", "no-cache")]
        return 200, headers, _Reply(chunks, on_close=lambda: self.service.engine.cancel(job))

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
        return self._openai_run(req, body, chat=True)

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
        return self._openai_run(req, body, chat=False)

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
            return self._send_json(200, {"id": rid, "object": obj_kind, "created": created,
                                         "model": model, "choices": [choice],
                                         "usage": usage(stats), "system_fingerprint": None})

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

        def events_of_the_job():
            if chat:
                yield event(delta(role=True))
            for message in self._wait(job, events):
                if message["type"] == "chunk":
                    yield event(delta(message["text"]))
                elif message["type"] == "final" or message.get("code") == "json_incomplete":
                    yield event(delta(finish=finish_of(message)))
                    if include_usage:
                        yield event(None, usage=usage(message["stats"]))
                    yield b"data: [DONE]\n\n"
                else:
                    err = {"error": {"message": message["message"], "type": "server_error",
                                     "param": None, "code": message["code"]}}
                    yield b"data: " + json.dumps(err).encode() + b"\n\n"

        return self._stream(job, "text/event-stream", events_of_the_job())

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
            return self._send_json(200, {"model": self.service.model_name(),
                                         "created_at": _now_iso(), "response": "",
                                         "done": True, "done_reason": "load"})
        if body.get("raw"):
            req["prompt"] = prompt
        else:
            system = body.get("system")
            req["messages"] = ([{"role": "system", "content": system}] if system else []) + \
                [{"role": "user", "content": prompt}]
        return self._ollama_run(req, chat=False)

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
        return self._ollama_run(req, chat=True)

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
            return self._send_json(200, final(message))
        def lines():
            for message in self._wait(job, events):
                if message["type"] == "chunk":
                    line = piece(message["text"])
                elif message["type"] == "final" or message.get("code") == "json_incomplete":
                    line = final(message)
                else:
                    line = {"error": message["message"], "code": message["code"]}
                yield json.dumps(line).encode() + b"\n"

        return self._stream(job, "application/x-ndjson", lines())


_ROUTES = {
    ("GET", "/"): _Exchange._root,
    ("GET", "/health"): _Exchange._health,
    ("GET", "/v1/models"): _Exchange._models,
    ("POST", "/v1/chat/completions"): _Exchange._chat_completions,
    ("POST", "/v1/completions"): _Exchange._completions,
    ("GET", "/api/tags"): _Exchange._tags,
    ("GET", "/api/ps"): _Exchange._ps,
    ("GET", "/api/version"): _Exchange._version,
    ("POST", "/api/show"): _Exchange._show,
    ("POST", "/api/generate"): _Exchange._ollama_generate,
    ("POST", "/api/chat"): _Exchange._ollama_chat,
}
_JOB_ROUTES = {_Exchange._chat_completions, _Exchange._completions, _Exchange._ollama_generate,
               _Exchange._ollama_chat}
