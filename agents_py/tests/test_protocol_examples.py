"""The protocol directory agrees with itself and with the Python decoder.

Every valid example line is accepted by the JSON Schema of its direction and by
`mnemosyne.runtime.wire.decode_line`; every invalid line is rejected by both (a line that is not
strict JSON fails before any schema applies). The Rust tests load the same files.
"""

import json
import re

import jsonschema
import pytest

from mnemosyne.runtime import wire

from worker_harness import PROTOCOL_DIR, iter_example_lines, load_schema

SENDERS = {"worker": wire.Sender.WORKER, "supervisor": wire.Sender.SUPERVISOR}
SCHEMAS = {name: load_schema(sender) for name, sender in SENDERS.items()}

VALID = [
    pytest.param(direction, line, id=f"{name}:{number}")
    for direction in SENDERS
    for name, number, line in iter_example_lines(direction, "valid")
]
INVALID = [
    pytest.param(direction, line, id=f"{name}:{number}")
    for direction in SENDERS
    for name, number, line in iter_example_lines(direction, "invalid")
]


@pytest.mark.parametrize("direction", SENDERS)
def test_schema_is_a_valid_draft_2020_12_schema(direction):
    jsonschema.Draft202012Validator.check_schema(SCHEMAS[direction].schema)


@pytest.mark.parametrize(("direction", "line"), VALID)
def test_valid_example_is_accepted_by_schema_and_decoder(direction, line):
    decoded = wire.decode_line(line, SENDERS[direction])
    assert decoded.kind is wire.LineKind.MESSAGE, decoded.reason
    errors = [error.message for error in SCHEMAS[direction].iter_errors(decoded.message)]
    assert errors == []


@pytest.mark.parametrize(("direction", "line"), INVALID)
def test_invalid_example_is_rejected_by_schema_and_decoder(direction, line):
    assert line.startswith(b"{"), "only protocol violations belong in invalid/, not stray lines"
    decoded = wire.decode_line(line, SENDERS[direction])
    assert decoded.kind is wire.LineKind.VIOLATION
    try:
        document = wire.parse_strict_json(line)
    except ValueError:
        return  # not strict JSON: rejected before any schema applies
    assert not SCHEMAS[direction].is_valid(document)


@pytest.mark.parametrize("direction", SENDERS)
def test_every_message_type_has_a_valid_example(direction):
    seen = {
        json.loads(line)["type"]
        for _, _, line in iter_example_lines(direction, "valid")  # valid lines are plain JSON
    }
    assert seen == set(wire.MESSAGE_FIELDS[SENDERS[direction]])


@pytest.mark.parametrize("direction", SENDERS)
def test_schema_and_decoder_know_the_same_message_types(direction):
    schema = SCHEMAS[direction].schema
    types = {
        schema["$defs"][ref["$ref"].rpartition("/")[2]]["properties"]["type"]["const"]
        for ref in schema["oneOf"]
    }
    assert types == set(wire.MESSAGE_FIELDS[SENDERS[direction]])


def test_example_files_hold_one_message_per_line_with_no_blank_lines():
    for path in sorted((PROTOCOL_DIR / "examples").glob("*/*.ndjson")):
        data = path.read_bytes()
        assert data.endswith(b"\n"), path
        assert b"\n\n" not in data and b"\r" not in data, path


def test_invalid_readme_explains_every_invalid_line():
    readme = (PROTOCOL_DIR / "examples" / "invalid" / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([^`]+)` \| (\d+) \| .+ \|$", readme, flags=re.MULTILINE)
    explained = {(name, int(number)) for name, number in rows}
    lines = {
        (name, number)
        for direction in SENDERS
        for name, number, _ in iter_example_lines(direction, "invalid")
    }
    assert explained == lines
    assert len(rows) == len(explained), "a line is explained twice"


def test_every_json_line_in_the_protocol_readme_is_a_valid_message():
    readme = (PROTOCOL_DIR / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```json\n(.*?)```", readme, flags=re.DOTALL)
    lines = [line for block in blocks for line in block.splitlines() if line.strip()]
    assert lines
    for line in lines:
        accepted_by = [
            direction
            for direction, sender in SENDERS.items()
            if wire.decode_line(line.encode(), sender).kind is wire.LineKind.MESSAGE
            and SCHEMAS[direction].is_valid(json.loads(line))
        ]
        assert accepted_by, f"README example fits neither direction: {line}"
