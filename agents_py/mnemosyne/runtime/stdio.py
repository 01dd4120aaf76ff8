"""Ownership of the protocol stream: moving the wire off fds 0 and 1 before other code runs.

The supervisor reads the worker's stdout as NDJSON, so a single stray `print()`, a C library
writing to fd 1, or a child process inheriting fd 1 would corrupt the wire. Taking the stream
moves the protocol to private, close-on-exec duplicates of fds 0 and 1, then points fd 1 (and
`sys.stdout`) at stderr and fd 0 at /dev/null. Afterwards anything that writes to "stdout" lands
on stderr, and no child process can read protocol input.

Entry points call `take_protocol_stream()` as their first statement, before importing anything
that might print. Output written before that (a banner, say) still reaches the real stdout; the
supervisor logs and skips such stray lines.

This module imports only the standard library's cheapest modules, on purpose.
"""

import contextlib
import fcntl
import os
import sys
import threading

_stream: "ProtocolStream | None" = None
_take_lock = threading.Lock()


class ProtocolStream:
    """The private file descriptors the protocol travels on, with one serialised writer."""

    def __init__(self, read_fd: int | None, write_fd: int) -> None:
        # None when the process started without a stdin: the worker then sees EOF at once.
        self.read_fd = read_fd
        self.write_fd = write_fd
        self._write_lock = threading.Lock()

    def write_line(self, line: bytes) -> None:
        """Writes `line` and a newline as one unit, blocking until the kernel has all of it.

        Pipes only keep writes up to PIPE_BUF (4 KiB) atomic, and a blocking write to a pipe may
        still return short, so the lock keeps concurrent writers (the event loop, the parent
        watchdog thread, a fatal error) from interleaving, and the loop finishes short writes.
        Raises OSError (BrokenPipeError once the supervisor has closed its end).
        """
        data = memoryview(line + b"\n")
        with self._write_lock:
            while data:
                written = os.write(self.write_fd, data)
                data = data[written:]


def take_protocol_stream() -> ProtocolStream:
    """Takes the protocol stream on the first call; later calls return the same stream."""
    global _stream
    with _take_lock:
        if _stream is None:
            _stream = _take()
        return _stream


def _take() -> ProtocolStream:
    # Anything Python buffered for stdout so far was meant for the real stdout; send it there
    # now rather than let it surface on stderr later or, worse, on the wire.
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.flush()

    # F_DUPFD_CLOEXEC with a floor of 3 gives a descriptor that is neither 0, 1 nor 2 and that
    # no child process inherits, so only this process can write protocol lines.
    write_fd = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    try:
        read_fd: int | None = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    except OSError:
        read_fd = None

    try:
        os.dup2(2, 1)
    except OSError:
        # No stderr at all: the noise still must not reach the wire.
        _point_at_devnull(1, os.O_WRONLY)
    _point_at_devnull(0, os.O_RDONLY)
    sys.stdout = sys.stderr
    return ProtocolStream(read_fd, write_fd)


def _point_at_devnull(fd: int, flags: int) -> None:
    devnull = os.open(os.devnull, flags)
    if devnull == fd:
        # The slot was free, so os.open filled it, non-inheritable by default (PEP 446); child
        # processes must still find a descriptor there.
        os.set_inheritable(fd, True)
    else:
        os.dup2(devnull, fd)
        os.close(devnull)
