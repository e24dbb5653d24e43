"""Byte-stream framing for serial lines and sockets: NDJSON lines and COBS + CRC-32 frames.

Both decoders are incremental (feed() whatever bytes arrived, get back whole frames), bound
every frame by a maximum size, and resynchronise after garbage: an oversize or corrupt frame
is reported once and everything up to the next delimiter is dropped.

Binary frame layout (for noisy lines):

    COBS( payload || CRC-32(payload) as 4 bytes little-endian ) || 0x00

COBS (Consistent Overhead Byte Stuffing) removes every zero byte from the encoded frame, so
0x00 marks frame boundaries unambiguously and a receiver joining mid-stream or after line
noise recovers at the next zero. The CRC is zlib's CRC-32 (IEEE 802.3, the one most
microcontroller libraries ship). The payload is a UTF-8 JSON request or reply.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass


def cobs_encode(data: bytes) -> bytes:
    """COBS-encodes `data`; the result contains no zero byte and is len(data)+1..+1+n/254."""
    out = bytearray()
    block = bytearray()
    open_block = True          # a code byte is still owed for the block being collected
    for byte in data:
        if byte == 0:
            out.append(len(block) + 1)
            out += block
            block.clear()
            open_block = True
        else:
            block.append(byte)
            open_block = True
            if len(block) == 254:
                # A full block: code 0xFF means "254 data bytes, no zero follows". Input
                # that ends right here needs no further code byte.
                out.append(255)
                out += block
                block.clear()
                open_block = False
    if open_block:
        out.append(len(block) + 1)
        out += block
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Inverse of cobs_encode. Raises ValueError on a zero byte or a code past the end."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise ValueError("zero byte inside a COBS frame")
        end = i + code
        if end > n:
            raise ValueError("COBS code runs past the end of the frame")
        block = data[i + 1:end]
        if 0 in block:
            raise ValueError("zero byte inside a COBS frame")
        out += block
        i = end
        if code < 255 and i < n:
            out.append(0)
    return bytes(out)


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def encode_frame(payload: bytes) -> bytes:
    """payload -> one delimited binary frame."""
    return cobs_encode(payload + crc32(payload).to_bytes(4, "little")) + b"\0"


@dataclass
class FrameEvent:
    """One decoded unit: a payload, or an error with its code from protocol.ERROR_CODES."""
    payload: bytes | None = None
    error: str | None = None       # "too_large" | "bad_frame"
    detail: str = ""


class FrameDecoder:
    """Incremental decoder of COBS + CRC-32 frames with a maximum payload size."""

    def __init__(self, max_payload: int):
        self.max_payload = max_payload
        # An encoded frame is at most payload + CRC + COBS overhead (1 per 254) + 1.
        self.max_encoded = max_payload + 4 + (max_payload + 4) // 254 + 2
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[FrameEvent]:
        events = []
        start = 0
        while True:
            zero = data.find(b"\0", start)
            if zero < 0:
                self._append(data[start:], events)
                return events
            self._append(data[start:zero], events)
            start = zero + 1
            if self._discarding:
                self._discarding = False
                self._buf.clear()
                continue
            if self._buf:
                events.append(self._decode(bytes(self._buf)))
                self._buf.clear()
            # An empty frame (two zeros in a row) is how a sender flushes a noisy line.

    def _append(self, data: bytes, events: list) -> None:
        if self._discarding or not data:
            return
        self._buf += data
        if len(self._buf) > self.max_encoded:
            events.append(FrameEvent(error="too_large", detail=f"frame longer than "
                                     f"{self.max_payload} payload bytes; dropped"))
            self._buf.clear()
            self._discarding = True

    def _decode(self, encoded: bytes) -> FrameEvent:
        try:
            raw = cobs_decode(encoded)
        except ValueError as exc:
            return FrameEvent(error="bad_frame", detail=str(exc))
        if len(raw) < 5:
            return FrameEvent(error="bad_frame", detail=f"frame of {len(raw)} bytes is "
                                                        f"shorter than a CRC-32")
        payload, crc = raw[:-4], int.from_bytes(raw[-4:], "little")
        if crc32(payload) != crc:
            return FrameEvent(error="bad_frame", detail="CRC-32 mismatch")
        if len(payload) > self.max_payload:
            return FrameEvent(error="too_large", detail=f"payload of {len(payload)} bytes; "
                                                        f"the limit is {self.max_payload}")
        return FrameEvent(payload=payload)


class LineDecoder:
    """Incremental NDJSON splitter: lines up to `max_line` bytes; CR before LF is dropped."""

    def __init__(self, max_line: int):
        self.max_line = max_line
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[FrameEvent]:
        events = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            part = data[start:] if nl < 0 else data[start:nl]
            if not self._discarding:
                self._buf += part
                if len(self._buf) > self.max_line:
                    events.append(FrameEvent(error="too_large", detail=f"line longer than "
                                             f"{self.max_line} bytes; dropped"))
                    self._buf.clear()
                    self._discarding = True
            if nl < 0:
                return events
            start = nl + 1
            if self._discarding:
                self._discarding = False
            else:
                line = bytes(self._buf).rstrip(b"\r")
                if line.strip():
                    events.append(FrameEvent(payload=line))
            self._buf.clear()
