"""Serial transport (pyserial): NDJSON text mode or COBS + CRC-32 binary frames.

Text mode suits a microcontroller that can print a line of JSON; binary mode (framing.py)
suits a noisy line, where a corrupt frame is answered with a `bad_frame` error and the
decoder resynchronises at the next 0x00. Both bound the frame size (`too_large`).

One serial port is one StreamSession: requests may overlap and replies carry their ids; a
`{"cancel": id}` request stops one. A port that disappears (USB unplugged) cancels what was
running and is reopened every `reopen_s` seconds.
"""

from __future__ import annotations

import logging
import threading

import serial

from edgellm.services.engine import RequestEngine
from edgellm.services.stream_session import StreamSession

log = logging.getLogger(__name__)

FLOW_CONTROLS = ("none", "rtscts", "xonxoff", "dsrdtr")


class SerialService:
    def __init__(self, engine: RequestEngine, port: str, baud: int = 115200,
                 mode: str = "text", flow_control: str = "none", max_frame_bytes: int = 4096,
                 reopen_s: float = 2.0):
        if flow_control not in FLOW_CONTROLS:
            raise ValueError(f"flow_control must be one of {FLOW_CONTROLS}")
        self.engine = engine
        self.port = port
        self.baud = baud
        self.mode = mode
        self.flow_control = flow_control
        self.max_frame_bytes = max_frame_bytes
        self.reopen_s = reopen_s
        self.name = f"serial:{port}"
        self._serial: serial.Serial | None = None
        self._session: StreamSession | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_lock = threading.Lock()

    def _open(self) -> serial.Serial:
        return serial.Serial(
            self.port, self.baud, timeout=0.2, write_timeout=5.0,
            rtscts=self.flow_control == "rtscts", xonxoff=self.flow_control == "xonxoff",
            dsrdtr=self.flow_control == "dsrdtr", exclusive=True)

    def start(self) -> None:
        # Open once up front so a wrong port fails `serve` at startup with a clear error.
        try:
            self._serial = self._open()
        except (serial.SerialException, OSError) as exc:
            raise OSError(f"cannot open serial port {self.port}: {exc}") from None
        log.info("serial: %s at %d baud, %s mode, flow control %s", self.port, self.baud,
                 self.mode, self.flow_control)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _write(self, data: bytes) -> None:
        ser = self._serial
        if ser is None:
            raise OSError("serial port is closed")
        with self._write_lock:
            ser.write(data)

    def _run(self) -> None:
        while not self._stop.is_set():
            ser = self._serial
            if ser is None:
                try:
                    ser = self._serial = self._open()
                    log.info("serial: %s reopened", self.port)
                except (serial.SerialException, OSError):
                    self._stop.wait(self.reopen_s)
                    continue
            self._session = StreamSession(self.engine, self._write, self.name,
                                          framing=self.mode, max_frame=self.max_frame_bytes)
            try:
                while not self._stop.is_set():
                    data = ser.read(max(1, ser.in_waiting))
                    if data:
                        self._session.feed(data)
            except (serial.SerialException, OSError, TypeError) as exc:
                # TypeError: pyserial's read on a port closed under it by stop().
                if self._stop.is_set():
                    return
                log.warning("serial: %s failed (%s); reopening", self.port, exc)
                self._session.close()
                self._serial = None
                try:
                    ser.close()
                except Exception:
                    pass

    def stop_accepting(self) -> None:
        # Requests that still arrive are answered "shutting_down" by the engine.
        pass

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._session is not None:
            self._session.finish(timeout)
        if self._thread is not None:
            self._thread.join(timeout)
        if self._serial is not None:
            self._serial.close()
