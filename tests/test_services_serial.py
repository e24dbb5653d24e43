"""Serial transport on real pseudo-terminal pairs: NDJSON text mode and COBS + CRC-32 frames."""

import json
import os
import select
import time
import tty

import pytest
from services_fixtures import make_engine  # noqa: F401

from edgellm.services.framing import FrameDecoder, encode_frame
from edgellm.services.serial_line import SerialService


class PtyEnd:
    """The microcontroller's end of the line: the pty master."""

    def __init__(self, framing: str):
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        self.path = os.ttyname(self.slave)
        self.framing = framing
        self.buf = b""
        self.frames = FrameDecoder(1 << 16)
        self.pending = []

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def send(self, obj) -> None:
        payload = json.dumps(obj).encode()
        self.write(payload + b"\n" if self.framing == "text" else encode_frame(payload))

    def recv(self, timeout: float = 120.0) -> dict:
        end = time.monotonic() + timeout
        while True:
            if self.framing == "text" and b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                return json.loads(line)
            if self.framing == "cobs" and self.pending:
                event = self.pending.pop(0)
                assert event.error is None, event
                return json.loads(event.payload)
            ready, _, _ = select.select([self.master], [], [], max(0, end - time.monotonic()))
            assert ready, "no reply on the serial line"
            data = os.read(self.master, 4096)
            if self.framing == "text":
                self.buf += data
            else:
                self.pending += self.frames.feed(data)

    def until_terminal(self):
        out = []
        while True:
            out.append(self.recv())
            if out[-1]["type"] != "chunk":
                return out

    def close(self):
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture(params=["text", "cobs"])
def line(request, make_engine):
    engine = make_engine(queue_size=2)
    end = PtyEnd(request.param)
    svc = SerialService(engine, end.path, baud=115200, mode=request.param,
                        flow_control="rtscts", max_frame_bytes=512)
    svc.start()
    yield end
    svc.stop_accepting()
    engine.stop()
    svc.close()
    end.close()


def test_streamed_request_and_reply(line):
    line.send({"id": 5, "prompt": "Hello", "max_tokens": 2, "temperature": 0,
               "stream": True})
    msgs = line.until_terminal()
    assert msgs[-1]["type"] == "final" and msgs[-1]["id"] == 5
    assert [m["seq"] for m in msgs[:-1]] == list(range(msgs[-1]["chunks"]))


def test_garbage_oversize_and_bad_requests_are_answered_and_the_line_recovers(line):
    if line.framing == "text":
        line.write(b"\x00\xff noise {\n")
        assert line.recv()["code"] in ("bad_utf8", "bad_json")
        line.write(b'{"prompt": "' + b"x" * 1000 + b'"}\n')
        assert line.recv()["code"] == "too_large"
    else:
        line.write(b"\x13\x37 line noise \x00")
        assert line.recv()["code"] == "bad_frame"
        corrupt = bytearray(encode_frame(b'{"prompt": "hi"}'))
        corrupt[3] ^= 0x01
        line.write(bytes(corrupt))
        err = line.recv()
        assert err["code"] == "bad_frame" and "CRC" in err["message"]
        line.write(encode_frame(b'{"prompt": "' + b"x" * 1000 + b'"}'))
        assert line.recv()["code"] == "too_large"
    line.send({"id": "q", "prompt": "Hi", "max_tokens": 0})
    assert line.recv()["code"] == "bad_value"
    line.send({"id": "ok", "prompt": "Hi", "max_tokens": 1})
    assert line.until_terminal()[-1]["type"] == "final"


def test_cancel_over_the_line(line):
    line.send({"id": "long", "prompt": "Tell a story.", "max_tokens": 300, "stream": True})
    assert line.recv()["type"] == "chunk"
    line.send({"cancel": "long"})
    msgs = line.until_terminal()
    assert msgs[-1] == {"id": "long", "type": "error", "code": "cancelled",
                        "message": "the request was cancelled"}


def test_missing_port_fails_at_start_with_its_name(make_engine):
    svc = SerialService(make_engine(), "/dev/ttyNOPE9", baud=9600)
    with pytest.raises(OSError, match="cannot open serial port /dev/ttyNOPE9"):
        svc.start()
