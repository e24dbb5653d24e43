"""The request engine: one loaded model, one worker thread, a bounded queue in front of it.

Every transport hands the engine a validated Request and a sink (a callable taking a reply
dict, see protocol.py). The engine promises:

- submit() never blocks: a full queue is an immediate ServiceError("busy"), never a drop;
- every accepted job ends with exactly one terminal message, "final" or "error", delivered
  through its sink, whatever happens (client gone, deadline, shutdown, a bug);
- chunks of a streamed job arrive in order before its terminal message;
- jobs start in arrival order and run on the engine's own thread (a Model is not
  thread-safe); up to the model's `parallel` sequences run at once, one forward pass per
  step over all of them (runtime/batching.py), a new job joining between steps. Requests that
  share a prompt prefix (a kiosk's fixed system prompt) reuse the KV cache: each sequence
  keeps what it last held, a new job takes the one sharing the most with it (or copies the
  prefix from a busy one), and the engine always renders the same system prompt to the same
  tokens.

`is_healthy()` is the liveness test for the systemd watchdog: true while the worker is idle
or has produced a token (or started/finished a job) within `stall_timeout_s`.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import threading
import time
from typing import Any, Callable

from edgellm.runtime.batching import Scheduler
from edgellm.errors import EdgeLLMError
from edgellm.services.protocol import Limits, Request, ServiceError

log = logging.getLogger(__name__)

Sink = Callable[["Job", dict], None]

_job_numbers = itertools.count(1)


class Job:
    """One accepted request on its way through the engine."""

    def __init__(self, request: Request, sink: Sink, client: str):
        self.number = next(_job_numbers)
        self.request = request
        self.sink = sink
        self.client = client
        self.arrived = time.monotonic()
        self.deadline = self.arrived + request.deadline_s
        self.started: float | None = None
        self.cancel_code: str | None = None    # why it was stopped early, once it is
        self.done = False
        self.generation = None                  # the runtime Generation while running
        self.constraint = None                  # its JSON-schema constraint, if any
        self.chunks = 0                         # chunks sent (streamed jobs)
        self._lock = threading.Lock()

    @property
    def id(self):
        return self.request.id

    def cancel(self, code: str = "cancelled") -> None:
        """Stops the job; its terminal message will be an error with `code`. Thread-safe."""
        with self._lock:
            if self.done or self.cancel_code is not None:
                return
            self.cancel_code = code
            gen = self.generation
        if gen is not None:
            gen.cancel()

    def _terminal(self, message: dict) -> bool:
        """Delivers the one terminal message; later attempts are dropped."""
        with self._lock:
            if self.done:
                return False
            self.done = True
        try:
            self.sink(self, message)
        except Exception:  # a broken client must not take the engine down
            log.exception("job %d: delivering %s failed", self.number, message.get("type"))
        return True

    def _error(self, err: ServiceError) -> bool:
        return self._terminal(err.reply(self.id))


class RequestEngine:
    """Owns the model; see the module docstring for the guarantees."""

    def __init__(self, model, limits: Limits = Limits(), queue_size: int = 8,
                 system_prompt: str | None = None, node: str = "edgellm",
                 stall_timeout_s: float = 60.0, speculate: bool = True):
        self.model = model
        self.limits = limits
        self.queue_size = queue_size
        self.system_prompt = system_prompt
        self.node = node
        self.stall_timeout_s = stall_timeout_s
        self.speculate = speculate
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._running: list[Job] = []           # jobs the scheduler is stepping
        self._starting = 0                      # jobs taken from the queue, not yet running
        self._scheduler = Scheduler(model)
        self._job_of: dict = {}                 # Generation -> its Job (worker thread only)
        self._accepting = False
        self._stopping = False
        self._worker: threading.Thread | None = None
        self._monitor: threading.Thread | None = None
        self._last_progress = time.monotonic()
        self.started_at = time.time()
        self.counts: collections.Counter = collections.Counter()
        self.tokens_generated = 0
        self.last_tokens_per_s = 0.0
        self._ewma_tokens_per_s = 0.0
        # What serve's adapters report, for status(): name -> "ok" or what is wrong.
        self.adapter_states: Callable[[], dict[str, str]] = dict

    @property
    def parallel(self) -> int:
        """Jobs that run at once: the model's sequences."""
        return self.model.parallel

    @property
    def model_name(self) -> str:
        return getattr(self.model, "name", "model")

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> "RequestEngine":
        self._accepting = True
        self._worker = threading.Thread(target=self._work, name="engine-worker", daemon=True)
        self._monitor = threading.Thread(target=self._watch_deadlines, name="engine-deadlines",
                                         daemon=True)
        self._worker.start()
        self._monitor.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stops accepting, ends queued and running jobs with "shutting_down", joins."""
        with self._cond:
            self._accepting = False
            self._stopping = True
            queued = list(self._queue)
            self._queue.clear()
            running = list(self._running)
            self._cond.notify_all()
        for job in queued:
            self._count_terminal(job._error(ServiceError(
                "shutting_down", "the service is stopping before this request started")),
                "shutting_down")
        for job in running:
            job.cancel("shutting_down")
        for thread in (self._worker, self._monitor):
            if thread is not None:
                thread.join(timeout)
        for job in running:
            if not job.done:
                # The runtime did not honour cancel in time: answer anyway; the worker's late
                # terminal message, if it ever comes, is dropped by Job._terminal.
                job._error(ServiceError("shutting_down", "the service is stopping"))

    # -- submitting ---------------------------------------------------------------------------

    def submit(self, request: Request, sink: Sink, client: str = "") -> Job:
        """Queues a request. Raises ServiceError busy / shutting_down when it cannot."""
        job = Job(request, sink, client)
        with self._cond:
            if not self._accepting:
                self.counts["shutting_down"] += 1
                raise ServiceError("shutting_down", "the service is stopping; retry "
                                                    "against another instance")
            # queue_size counts requests waiting for a sequence: with every sequence taken
            # (running, or about to start) and queue_size waiting, one more is busy.
            admitted = len(self._queue) + self._starting + len(self._running)
            if admitted >= self.parallel + self.queue_size:
                self.counts["busy"] += 1
                raise ServiceError("busy", f"{len(self._queue)} requests are queued (the "
                                           f"limit); retry in a moment")
            self._queue.append(job)
            self.counts["accepted"] += 1
            self._cond.notify_all()
        log.debug("job %d accepted from %s (id %r)", job.number, client, job.id)
        return job

    def cancel(self, job: Job, code: str = "cancelled") -> None:
        """Cancels a queued job at once (freeing its slot) or stops a running one."""
        with self._cond:
            queued = job in self._queue
            if queued:
                self._queue.remove(job)
                self._cond.notify_all()
        if queued:
            job.cancel(code)
            self._count_terminal(job._error(_cancel_error(code, job)), code)
        else:
            job.cancel(code)

    # -- status -------------------------------------------------------------------------------

    def queue_depth(self) -> int:
        with self._cond:
            return len(self._queue)

    def is_healthy(self) -> bool:
        if self._worker is None or not self._worker.is_alive():
            return False
        with self._cond:
            busy = bool(self._running)
        return not busy or time.monotonic() - self._last_progress < self.stall_timeout_s

    def status(self) -> dict:
        with self._cond:
            depth, running = len(self._queue), len(self._running)
        return {
            "node": self.node,
            "model": self.model_name,
            "state": "busy" if running else "idle",
            "running": running,
            "parallel": self.parallel,
            "queue_depth": depth,
            "queue_size": self.queue_size,
            "healthy": self.is_healthy(),
            "tokens_per_s": round(self._ewma_tokens_per_s, 2),
            "last_tokens_per_s": round(self.last_tokens_per_s, 2),
            "tokens_generated": self.tokens_generated,
            "requests": dict(self.counts),
            "uptime_s": round(time.time() - self.started_at, 1),
            "adapters": self.adapter_states(),
        }

    # -- the worker ---------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._running and not self._stopping:
                    self._last_progress = time.monotonic()   # idle counts as healthy progress
                    self._cond.wait(1.0)
                if self._stopping:
                    return
                starting = []
                while self._queue and self._scheduler.free_slots > len(starting):
                    starting.append(self._queue.popleft())
                self._starting = len(starting)
                self._cond.notify_all()
            for job in starting:
                try:
                    self._guarded(job, self._start, job)
                finally:
                    with self._cond:
                        self._starting -= 1
            if self._scheduler.running:
                self._step()
            self._last_progress = time.monotonic()

    def _guarded(self, job: Job, fn, *args) -> None:
        """Runs fn; a bug there ends this job with "internal", never the service."""
        try:
            fn(*args)
        except Exception as exc:
            log.exception("job %d failed", job.number)
            self._drop(job)
            self._count_terminal(job._error(ServiceError(
                "internal", f"internal error: {type(exc).__name__}: {exc}")), "internal")

    def _drop(self, job: Job) -> None:
        with self._cond:
            if job in self._running:
                self._running.remove(job)
            self._cond.notify_all()

    def _start(self, job: Job) -> None:
        """Creates the job's generation and hands it to the scheduler (or ends the job)."""
        req = job.request
        job.started = time.monotonic()
        if job.cancel_code is None and job.deadline <= job.started:
            job.cancel_code = "deadline"
        if job.cancel_code is not None:
            self._count_terminal(job._error(_cancel_error(job.cancel_code, job)),
                                 job.cancel_code)
            return
        if req.schema is not None:
            from edgellm.runtime.json_constraint import JSONSchemaConstraint
            job.constraint = JSONSchemaConstraint(req.schema)
        try:
            gen = self._start_generation(req, job.constraint)
        except ServiceError as err:
            self._count_terminal(job._error(err), err.code)
            return
        with job._lock:
            job.generation = gen
            cancelled_before = job.cancel_code is not None
        if cancelled_before:
            gen.cancel()
        self._scheduler.add(gen)
        self._job_of[gen] = job
        with self._cond:
            self._running.append(job)

    def _step(self) -> None:
        """One forward pass over the running jobs; delivers what it produced."""
        try:
            events = self._scheduler.step()
        except Exception as exc:  # the pass failed: every job in it ends, the service goes on
            log.exception("a decode step failed")
            for gen in self._scheduler.abort():
                job = self._job_of.pop(gen)
                self._drop(job)
                self._count_terminal(job._error(ServiceError(
                    "internal", f"internal error: {type(exc).__name__}: {exc}")), "internal")
            return
        now = time.monotonic()
        self._last_progress = now
        # hot loop: one iteration per generation that moved
        for gen, piece, done in events:
            job = self._job_of[gen]
            if job.request.stream and piece and job.cancel_code is None:
                try:
                    job.sink(job, {"id": job.id, "type": "chunk", "seq": job.chunks, "text": piece})
                except Exception as exc:
                    log.info("job %d: client gone while streaming (%s)", job.number, exc)
                    job.cancel("cancelled")
                job.chunks += 1
            if done:
                del self._job_of[gen]
                self._drop(job)
                self._guarded(job, self._finish, job, gen)
            elif job.cancel_code is None and now >= job.deadline:
                job.cancel("deadline")

    def _watch_deadlines(self) -> None:
        """Ends queued jobs whose deadline passed and cancels running ones past their own."""
        while True:
            with self._cond:
                if self._stopping:
                    return
                now = time.monotonic()
                expired = [j for j in self._queue if j.deadline <= now]
                for job in expired:
                    self._queue.remove(job)
                running = list(self._running)
                self._cond.wait(0.2)
            for job in expired:
                job.cancel("deadline")
                self._count_terminal(job._error(_cancel_error("deadline", job)), "deadline")
            for job in running:
                if job.deadline <= time.monotonic():
                    # Also covers a long prompt prefill, when no piece comes for a while.
                    job.cancel("deadline")

    def _count_terminal(self, delivered: bool, kind: str) -> None:
        if delivered:
            self.counts[kind] += 1

    def _finish(self, job: Job, gen) -> None:
        """The job's one terminal message, once its generation has ended."""
        req, constraint = job.request, job.constraint
        finish = gen.finish_reason
        n_gen = int(gen.n_generated)
        gen_ms = float(gen.generate_ms)
        self.tokens_generated += n_gen
        if n_gen > 1 and gen_ms > 0:
            self.last_tokens_per_s = n_gen * 1000.0 / gen_ms
            a = 0.3 if self._ewma_tokens_per_s else 1.0
            self._ewma_tokens_per_s += a * (self.last_tokens_per_s - self._ewma_tokens_per_s)

        if job.cancel_code is not None or finish == "cancelled":
            code = job.cancel_code or "cancelled"
            self._count_terminal(job._error(_cancel_error(code, job)), code)
            return

        stats = {
            "prompt_tokens": int(gen.n_prompt_tokens),
            "cached_tokens": int(gen.n_cached_tokens),
            "completion_tokens": n_gen,
            "proposed_tokens": int(gen.n_proposed),    # speculation: tokens verified
            "accepted_tokens": int(gen.n_accepted),    # of which stood
            "queue_ms": round((job.started - job.arrived) * 1000, 1),
            "prompt_ms": round(float(gen.prompt_ms), 1),
            "generate_ms": round(gen_ms, 1),
            "tokens_per_s": round(n_gen * 1000.0 / gen_ms, 2) if gen_ms > 0 else 0.0,
            "node": self.node,
        }
        final: dict[str, Any] = {"id": job.id, "type": "final", "finish_reason": finish,
                                 "chunks": job.chunks, "stats": stats}
        text = gen.text
        if not req.stream:
            final["text"] = text
        if constraint is not None:
            if not constraint.is_complete(text):
                err = ServiceError("json_incomplete", f"max_tokens={req.max_tokens} ran out "
                                   f"before the JSON reply was complete; raise max_tokens")
                reply = err.reply(job.id)
                reply["text"] = text
                reply["stats"] = stats
                self._count_terminal(job._terminal(reply), "json_incomplete")
                return
            final["json"] = json.loads(text)
        self._count_terminal(job._terminal(final), "answered")

    def _start_generation(self, req: Request, constraint):
        """Creates the runtime Generation, mapping runtime errors to error replies."""
        from edgellm.runtime import SamplingParams

        try:
            sampling = SamplingParams(**req.sampling)
            sampling.validate()
        except (EdgeLLMError, TypeError, ValueError) as exc:
            raise ServiceError("bad_value", str(exc)) from None
        kwargs = dict(max_tokens=req.max_tokens, sampling=sampling, stop=req.stop or None,
                      constraint=constraint, speculate=self.speculate)
        try:
            if req.messages is not None:
                messages = req.messages
                if self.system_prompt and messages[0]["role"] != "system":
                    # The same text every time, so it tokenizes the same and stays cached.
                    messages = [{"role": "system", "content": self.system_prompt}, *messages]
                gen = self.model.chat(messages, **kwargs)
            else:
                gen = self.model.generate(req.prompt, **kwargs)
        except EdgeLLMError as exc:
            # The runtime refuses a prompt that does not fit the context before it runs.
            code = "prompt_too_long" if "context" in str(exc) else "bad_value"
            raise ServiceError(code, str(exc), "prompt" if code == "prompt_too_long"
                               else None) from None
        # generate() tokenized the prompt without evaluating it: checking here costs nothing.
        limit = self.limits.max_prompt_tokens
        if gen.n_prompt_tokens > limit:
            raise ServiceError("prompt_too_long", f"the prompt is {gen.n_prompt_tokens} "
                               f"tokens; the limit is {limit}", "prompt")
        return gen


def _cancel_error(code: str, job: Job) -> ServiceError:
    if code == "deadline":
        return ServiceError("deadline", f"deadline of {job.request.deadline_s:g} s passed")
    if code == "shutting_down":
        return ServiceError("shutting_down", "the service is stopping")
    return ServiceError("cancelled", "the request was cancelled")
