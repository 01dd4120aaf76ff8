"""Tests of mnemosyne.runtime.wire: encoding, line splitting, and line classification."""

import json

import pytest

from mnemosyne.runtime import wire
from mnemosyne.runtime.wire import OVERSIZE, LineKind, LineSplitter, Sender, decode_line

LIMIT = 1024


def encode(message, limit=LIMIT):
    return wire.encode_message(message, limit)


# -- encoding ---------------------------------------------------------------------------------


def test_non_finite_floats_are_sent_as_null():
    line = encode({"a": float("nan"), "b": [float("inf"), -float("inf")], "c": 1.5})
    assert line == b'{"a":null,"b":[null,null],"c":1.5}'


def test_lone_surrogates_become_replacement_characters_in_values_and_keys():
    line = encode({"text": "a\ud800b", "key\udcff": ["\udc80"]})
    assert json.loads(line) == {"text": "a\ufffdb", "key\ufffd": ["\ufffd"]}
    assert wire.parse_strict_json(line)  # and the result is strict JSON


def test_non_ascii_text_is_sent_as_utf8_not_escaped():
    line = encode({"text": "héllo ✓ 😀"})
    assert line == '{"text":"héllo ✓ 😀"}'.encode()


def test_encoding_is_compact_and_has_no_newline():
    line = encode({"type": "pong", "nonce": 1, "text": "a\nb"})
    assert line == b'{"type":"pong","nonce":1,"text":"a\\nb"}'


def test_a_line_over_the_limit_is_refused():
    message = {"text": "x" * LIMIT}
    with pytest.raises(wire.LineTooLong) as raised:
        encode(message)
    assert raised.value.limit == LIMIT
    assert raised.value.size == len(json.dumps(message, separators=(",", ":")))


def test_a_line_of_exactly_the_limit_is_sent():
    padding = LIMIT - len(encode({"t": ""}))
    assert len(encode({"t": "x" * padding})) == LIMIT


def test_unserialisable_values_raise_type_error():
    with pytest.raises(TypeError):
        encode({"x": object()})


def test_max_line_bytes_defaults_to_16_mib_and_follows_the_environment():
    assert wire.max_line_bytes({}) == 16 * 1024 * 1024
    assert wire.max_line_bytes({wire.MAX_LINE_ENV: "4096"}) == 4096


@pytest.mark.parametrize("raw", ["0", "-5", "lots", "1.5"])
def test_max_line_bytes_rejects_what_is_not_a_positive_integer(raw):
    with pytest.raises(ValueError, match=wire.MAX_LINE_ENV):
        wire.max_line_bytes({wire.MAX_LINE_ENV: raw})


# -- splitting --------------------------------------------------------------------------------


def test_splitter_joins_lines_across_chunks_and_splits_several_in_one_chunk():
    splitter = LineSplitter(LIMIT)
    assert splitter.feed(b'{"a":') == []
    assert splitter.feed(b'1}\n{"b":2}\n{"c"') == [b'{"a":1}', b'{"b":2}']
    assert splitter.feed(b":3}\n") == [b'{"c":3}']
    assert splitter.finish() is None


def test_splitter_keeps_multibyte_characters_split_across_chunks_intact():
    encoded = '{"t":"✓"}\n'.encode()
    splitter = LineSplitter(LIMIT)
    lines = splitter.feed(encoded[:7]) + splitter.feed(encoded[7:])
    assert lines == ['{"t":"✓"}'.encode()]


def test_splitter_accepts_crlf_endings():
    assert LineSplitter(LIMIT).feed(b"{}\r\n\r\n") == [b"{}", b""]


def test_splitter_accepts_a_line_of_exactly_the_limit_even_with_crlf():
    line = b"x" * LIMIT
    splitter = LineSplitter(LIMIT)
    assert splitter.feed(line + b"\r") == []
    assert splitter.feed(b"\n") == [line]


def test_splitter_reports_an_oversize_line_without_buffering_it_and_then_resumes():
    splitter = LineSplitter(LIMIT)
    assert splitter.feed(b"x" * (LIMIT + 2)) == [OVERSIZE]
    # The rest of the long line is discarded as it arrives, up to its newline.
    assert splitter.feed(b"x" * (10 * LIMIT)) == []
    assert splitter.feed(b'xx\n{"ok":1}\n') == [b'{"ok":1}']


def test_splitter_reports_an_oversize_line_that_arrives_whole():
    assert LineSplitter(LIMIT).feed(b"x" * (LIMIT + 1) + b"\n{}\n") == [OVERSIZE, b"{}"]


def test_splitter_returns_a_partial_line_at_eof():
    splitter = LineSplitter(LIMIT)
    splitter.feed(b'{}\n{"half')
    assert splitter.finish() == b'{"half'


# -- decoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("line", [b"", b"   ", b"\t\r"])
def test_blank_lines_are_ignored(line):
    assert decode_line(line, Sender.SUPERVISOR).kind is LineKind.BLANK


@pytest.mark.parametrize("line", [b"hello", b"[1,2]", b"  Traceback (most recent", b"\xff\xfe"])
def test_lines_not_starting_with_a_brace_are_stray(line):
    decoded = decode_line(line, Sender.WORKER)
    assert decoded.kind is LineKind.STRAY
    assert decoded.preview


def test_stray_preview_is_cut_at_200_bytes():
    decoded = decode_line(b"y" * 500, Sender.WORKER)
    assert decoded.preview == "y" * 200 + "…"


def test_unknown_message_types_are_reported_as_unknown_not_violations():
    decoded = decode_line(b'{"type":"telemetry","x":1}', Sender.WORKER)
    assert decoded.kind is LineKind.UNKNOWN
    assert decoded.type == "telemetry"


def test_a_type_of_the_other_direction_is_unknown():
    assert decode_line(b'{"type":"shutdown","grace_ms":1}', Sender.WORKER).kind is LineKind.UNKNOWN
    hello = b'{"type":"hello","protocol":1}'
    assert decode_line(hello, Sender.SUPERVISOR).kind is LineKind.UNKNOWN


@pytest.mark.parametrize(
    "line",
    [
        b'{"type":"ping","nonce":1e400}',
        b'{"type":"ping","nonce":1,"x":Infinity}',
        b'{"type":"ping","nonce":1,"x":-Infinity}',
        b'{"type":"cancel","id":"\\ud800x"}',
        b'{"type":"cancel","id":"ok","\\udfff":1}',
        b'{"type":"cancel","id":"\xff"}',
    ],
)
def test_non_strict_json_is_a_violation(line):
    assert decode_line(line, Sender.SUPERVISOR).kind is LineKind.VIOLATION


def test_a_surrogate_pair_is_fine():
    decoded = decode_line(b'{"type":"cancel","id":"\\ud83d\\ude00"}', Sender.SUPERVISOR)
    assert decoded.kind is LineKind.MESSAGE
    assert decoded.message["id"] == "😀"


def test_a_line_over_the_limit_is_a_violation():
    line = b'{"type":"ping","nonce":1,"pad":"' + b"x" * LIMIT + b'"}'
    decoded = decode_line(line, Sender.SUPERVISOR, limit=LIMIT)
    assert decoded.kind is LineKind.VIOLATION
    assert "limit" in decoded.reason


def test_a_violation_keeps_the_parsed_object_so_a_request_id_can_be_answered():
    decoded = decode_line(b'{"type":"request","id":"job-1","method":"echo"}', Sender.SUPERVISOR)
    assert decoded.kind is LineKind.VIOLATION
    assert decoded.reason == "invalid `request` message: missing field `deadline_ms`"
    assert decoded.message["id"] == "job-1"


def test_booleans_are_not_integers():
    decoded = decode_line(b'{"type":"ping","nonce":true}', Sender.SUPERVISOR)
    assert decoded.kind is LineKind.VIOLATION
    assert "non-negative integer" in decoded.reason


def test_leading_whitespace_before_the_object_is_allowed():
    assert decode_line(b'  {"type":"ping","nonce":1} ', Sender.WORKER).kind is LineKind.MESSAGE


def test_unknown_fields_are_ignored():
    line = b'{"type":"ping","nonce":1,"sent_at":"later"}'
    assert decode_line(line, Sender.SUPERVISOR).kind is LineKind.MESSAGE


def test_encoded_messages_decode_to_themselves():
    message = {"type": "response", "id": "r", "result": {"text": "✓", "n": [1, 2.5, None]}}
    line = encode(message)
    assert decode_line(line, Sender.WORKER).message == message
