"""Tests of mnemosyne.runtime.stdio, in fresh interpreters (it rewires fds 0 and 1)."""

import subprocess
import sys

from worker_harness import DEFAULT_TIMEOUT_S, worker_env

# Takes the stream, makes noise every way a worker might, then writes one protocol line; it
# also reads the protocol input after a child process has had the chance to steal it.
SCRIPT = r"""
import os, subprocess, sys
from mnemosyne.runtime.stdio import take_protocol_stream

stream = take_protocol_stream()
assert take_protocol_stream() is stream
assert not os.get_inheritable(stream.write_fd) and not os.get_inheritable(stream.read_fd)
print("print after taking")
sys.__stdout__.write("sys.__stdout__ after taking\n")
sys.__stdout__.flush()
os.write(1, b"fd 1 after taking\n")
subprocess.run(["sh", "-c", "echo child stdout; cat"], check=True)
received = os.read(stream.read_fd, 100)
stream.write_line(b'{"type":"pong","nonce":' + received.strip() + b"}")
"""


def run_script(stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT],
        input=stdin,
        capture_output=True,
        env=worker_env(),
        timeout=DEFAULT_TIMEOUT_S,
    )


def test_after_taking_the_stream_only_protocol_lines_reach_stdout():
    done = run_script(b"42\n")
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b'{"type":"pong","nonce":42}\n'
    stderr = done.stderr.decode()
    for noise in ("print after taking", "sys.__stdout__", "fd 1 after taking", "child stdout"):
        assert noise in stderr


def test_child_processes_cannot_read_the_protocol_input():
    # The child runs `cat` on its stdin; had it inherited the protocol input it would have
    # eaten "7" and the script would have nothing left to answer with.
    done = run_script(b"7\n")
    assert done.stdout == b'{"type":"pong","nonce":7}\n'


def test_output_buffered_before_taking_the_stream_goes_to_the_real_stdout():
    script = (
        "import sys; sys.stdout.write('banner\\n');"
        "from mnemosyne.runtime.stdio import take_protocol_stream;"
        "take_protocol_stream().write_line(b'{}')"
    )
    env = worker_env({"PYTHONUNBUFFERED": ""})
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, env=env, timeout=DEFAULT_TIMEOUT_S
    )
    assert done.stdout == b"banner\n{}\n"
