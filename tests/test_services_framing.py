"""COBS + CRC-32 frames and NDJSON lines: exact encodings, resync after garbage, limits."""

import random
import zlib

import pytest

from edgellm.services.framing import (FrameDecoder, LineDecoder, cobs_decode, cobs_encode,
                                      crc32, encode_frame)


# The examples from Cheshire & Baker's COBS paper, as listed on Wikipedia.
@pytest.mark.parametrize("raw, encoded", [
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x00\x11\x00", b"\x01\x02\x11\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255))),
    (bytes(range(0, 255)), b"\x01\xff" + bytes(range(1, 255))),
    (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff"),
    (bytes(range(2, 256)) + b"\x00", b"\xff" + bytes(range(2, 256)) + b"\x01\x01"),
    (bytes(range(3, 256)) + b"\x00\x01", b"\xfe" + bytes(range(3, 256)) + b"\x02\x01"),
])
def test_cobs_matches_the_reference_examples(raw, encoded):
    assert cobs_encode(raw) == encoded
    assert cobs_decode(encoded) == raw


def test_cobs_round_trips_random_data_without_zero_bytes():
    rng = random.Random(5)
    for n in [0, 1, 253, 254, 255, 508, 1000]:
        for _ in range(5):
            raw = bytes(rng.choice([0, 0, 1, 255, rng.randrange(256)]) for _ in range(n))
            enc = cobs_encode(raw)
            assert 0 not in enc
            assert len(enc) <= n + 1 + n // 254 + 1
            assert cobs_decode(enc) == raw


@pytest.mark.parametrize("bad", [b"\x05\x11\x22", b"\x02\x00", b"\x00"])
def test_cobs_rejects_malformed_input(bad):
    with pytest.raises(ValueError):
        cobs_decode(bad)


def test_crc_is_ieee_crc32():
    assert crc32(b"123456789") == 0xCBF43926
    assert crc32(b"") == 0 == zlib.crc32(b"")


def test_frame_layout_is_cobs_of_payload_and_little_endian_crc():
    frame = encode_frame(b"hi")
    assert frame.endswith(b"\0") and frame.count(0) == 1
    raw = cobs_decode(frame[:-1])
    assert raw[:2] == b"hi" and int.from_bytes(raw[2:], "little") == crc32(b"hi")


def test_frames_split_across_reads_are_reassembled():
    stream = encode_frame(b'{"a":1}') + encode_frame(b"\x00\x00zero") + encode_frame(b"x")
    dec = FrameDecoder(64)
    events = []
    for i in range(len(stream)):
        events += dec.feed(stream[i:i + 1])
    assert [e.payload for e in events] == [b'{"a":1}', b"\x00\x00zero", b"x"]


def test_garbage_and_corruption_are_reported_and_the_next_frame_still_decodes():
    good = encode_frame(b"good")
    corrupt = bytearray(encode_frame(b"flip"))
    corrupt[2] ^= 0x40
    dec = FrameDecoder(64)
    events = dec.feed(b"\x13\x37garbage\x00" + bytes(corrupt) + b"\x00\x00" + good)
    assert [(e.error, e.payload) for e in events] == [("bad_frame", None), ("bad_frame", None),
                                                     (None, b"good")]
    assert "CRC" in events[1].detail


def test_oversize_frame_is_dropped_once_and_decoding_resumes():
    dec = FrameDecoder(16)
    big = encode_frame(b"y" * 100)
    events = dec.feed(big[:50]) + dec.feed(big[50:]) + dec.feed(encode_frame(b"ok"))
    assert [(e.error, e.payload) for e in events] == [("too_large", None), (None, b"ok")]


def test_lines_split_strip_cr_and_skip_blank_lines():
    dec = LineDecoder(32)
    events = dec.feed(b'{"a":') + dec.feed(b'1}\r\n\n  \n{"b":2}\n{"c"')
    assert [e.payload for e in events] == [b'{"a":1}', b'{"b":2}']
    assert [e.payload for e in dec.feed(b":3}\n")] == [b'{"c":3}']


def test_overlong_line_is_dropped_up_to_its_newline():
    dec = LineDecoder(8)
    events = dec.feed(b"0123456789") + dec.feed(b"abcdef\n") + dec.feed(b"short\n")
    assert [(e.error, e.payload) for e in events] == [("too_large", None), (None, b"short")]
