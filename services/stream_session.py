"""One byte-stream client (a socket connection or a serial line) talking to the engine.

Bytes in are split into frames (NDJSON lines or COBS frames, see framing.py), each frame is
a request or a cancel, and replies go out through a writer thread with a bounded backlog, so
the engine's worker never waits on a slow client: a client that stops reading for
`max_backlog` replies is dropped and its requests are cancelled. Closing a session (peer
gone) cancels every request it still has running or queued.

The end of the input (a socket client that shut down its write side) is not the peer going
away: end_input() lets every accepted request finish and its replies go out, then sets
`drained`, so `echo '{...}' | socat -t 60 - UNIX-CONNECT:...` gets its answer.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from typing import Callable

from edgellm.services.engine import Job, RequestEngine
from edgellm.services.framing import FrameDecoder, LineDecoder, encode_frame
from edgellm.services.protocol import (Limits, ServiceError, decode_payload, encode_line,
                                       parse_request, request_id_of)

log = logging.getLogger(__name__)

FRAMINGS = ("text", "cobs")


class StreamSession:
    def __init__(self, engine: RequestEngine, write: Callable[[bytes], None], name: str,
                 framing: str = "text", max_frame: int = 65536, max_backlog: int = 4096,
                 on_dead: Callable[[], None] | None = None):
        assert framing in FRAMINGS, framing
        self.engine = engine
        self.limits: Limits = engine.limits
        self.name = name
        self.framing = framing
        self.max_frame = max_frame
        self._write = write
        self._on_dead = on_dead
        self._decoder = LineDecoder(max_frame) if framing == "text" else FrameDecoder(max_frame)
        self._out: queue.Queue = queue.Queue(max_backlog)
        self._jobs: dict = {}                 # request id -> Job, while not terminated
        self._anonymous: set[Job] = set()     # running jobs that came without an id
        self._lock = threading.Lock()
        self.closed = False
        self._input_ended = False
        self._ordering = threading.RLock()    # see _deliver
        self.drained = threading.Event()      # the writer has stopped: all out, or closed
        self._writer = threading.Thread(target=self._write_loop, name=f"writer-{name}",
                                        daemon=True)
        self._writer.start()

    # -- in -----------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        for event in self._decoder.feed(data):
            if event.error is not None:
                self.send(ServiceError(event.error, event.detail).reply(None))
            else:
                self._handle(event.payload)

    def _handle(self, payload: bytes) -> None:
        obj = None
        try:
            obj = decode_payload(payload, self.max_frame)
            if isinstance(obj, dict) and "cancel" in obj:
                self._cancel(obj)
                return
            request, _ = parse_request(obj, self.limits)
            with self._lock:
                if request.id is not None and request.id in self._jobs:
                    raise ServiceError("bad_value", f"id {request.id!r} is still running on "
                                                    f"this connection", "id")
                job = self.engine.submit(request, self._deliver, client=self.name)
                if request.id is not None:
                    self._jobs[request.id] = job
                else:
                    self._anonymous.add(job)
        except ServiceError as err:
            self.send(err.reply(request_id_of(obj)))

    def _cancel(self, obj: dict) -> None:
        target = obj.get("cancel")
        if set(obj) - {"cancel", "id"}:
            raise ServiceError("unknown_field", "a cancel request has only 'cancel' "
                                                "(the id to cancel)", "cancel")
        with self._lock:
            job = self._jobs.get(target)
        if job is None:
            raise ServiceError("bad_value", f"no running request with id {target!r} on this "
                                            f"connection", "cancel")
        self.engine.cancel(job)

    # -- out ----------------------------------------------------------------------------------

    def _deliver(self, job: Job, message: dict) -> None:
        if message["type"] == "chunk":
            if self.closed:
                raise ConnectionError(f"{self.name} is closed")
            self.send(message)
            return
        # A terminal message: the job leaves the open set and its reply is queued in one step,
        # so end_input() never queues the writer's stop in between.
        with self._ordering:
            with self._lock:
                if job.id is not None and self._jobs.get(job.id) is job:
                    del self._jobs[job.id]
                self._anonymous.discard(job)
            if not self.closed:
                self.send(message)
        self._end_output_if_done()

    def send(self, message: dict | None) -> None:
        """Queues a reply for the writer; None tells the writer to stop after the rest."""
        if message is None:
            data = None
        elif self.framing == "text":
            data = encode_line(message)
        else:
            data = encode_frame(json.dumps(message, separators=(",", ":")).encode())
        try:
            self._out.put_nowait(data)
        except queue.Full:
            log.warning("%s: client is not reading replies; dropping it", self.name)
            self.close()
            if self._on_dead is not None:
                self._on_dead()

    def _write_loop(self) -> None:
        try:
            while True:
                data = self._out.get()
                if data is None:
                    return
                try:
                    self._write(data)
                except OSError as exc:
                    if not self.closed:
                        log.info("%s: write failed (%s); closing", self.name, exc)
                        self.close()
                        if self._on_dead is not None:
                            self._on_dead()
                    return
        finally:
            self.drained.set()

    # -- end ----------------------------------------------------------------------------------

    def end_input(self) -> None:
        """No more requests will come: once every accepted one has its final or error and
        those are written, the writer stops and `drained` is set."""
        with self._lock:
            self._input_ended = True
        self._end_output_if_done()

    def _end_output_if_done(self) -> None:
        with self._ordering:
            with self._lock:
                done = (self._input_ended and not self.closed and not self._jobs
                        and not self._anonymous)
            if done:
                self.send(None)

    def close(self, flush_timeout: float = 0.0) -> None:
        """Peer gone: cancel its requests. Safe to call more than once, from any thread."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            jobs = list(self._jobs.values()) + list(self._anonymous)
            self._jobs.clear()
            self._anonymous.clear()
        for job in jobs:
            self.engine.cancel(job, "cancelled")
        try:
            self._out.put_nowait(None)
        except queue.Full:
            pass
        if flush_timeout:
            self._writer.join(flush_timeout)

    def finish(self, timeout: float) -> None:
        """Service stopping: let queued replies go out (the engine already answered)."""
        try:
            self._out.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._writer.join(timeout)
        with self._lock:
            self.closed = True
