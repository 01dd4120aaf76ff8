"""Tests of mnemosyne.agents.command: shell commands in a process group, bounded and reaped.

Death is proven by pid checks with an upper bound on the wait, never by sleeping a guess.
"""

import asyncio
import os
import time

import pytest

from mnemosyne.agents import command
from mnemosyne.agents.command import OUTPUT_LIMIT_BYTES, run_command

DEADLINE_S = 5.0


def run(command, cwd, timeout_s=10.0, environ=None):
    return asyncio.run(run_command(command, cwd, timeout_s, environ or dict(os.environ)))


def is_gone(pid):
    """Whether `pid` is dead: gone, or a zombie nobody has reaped yet."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # The state follows the parenthesised command name.
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_gone(pid):
    deadline = time.monotonic() + DEADLINE_S
    while not is_gone(pid):
        assert time.monotonic() < deadline, f"process {pid} is still alive"
        time.sleep(0.01)


def test_a_command_runs_in_the_directory_and_reports_its_exit_code_and_output(tmp_path):
    result = run("pwd; echo oops >&2; exit 3", tmp_path)
    assert result.exit_code == 3 and result.timed_out is False
    assert result.stdout.strip() == str(tmp_path.resolve())
    assert result.stderr == "oops\n"


def test_stdin_is_empty_so_a_reader_does_not_wait(tmp_path):
    result = run("cat; echo done", tmp_path, timeout_s=5)
    assert (result.exit_code, result.stdout) == (0, "done\n")


def test_the_environment_is_an_allowlist_without_keys(tmp_path):
    environ = {
        "PATH": os.environ["PATH"],
        "HOME": "/h",
        "LC_MESSAGES": "C",
        "ANTHROPIC_API_KEY": "sk-ant-secret",
        "MNEMOSYNE_PROVIDER": "anthropic",
    }
    lines = run("env", tmp_path, environ=environ).stdout.splitlines()
    assert "HOME=/h" in lines and "LC_MESSAGES=C" in lines
    assert not any("sk-ant-secret" in line or "MNEMOSYNE" in line for line in lines)


def test_long_output_keeps_its_head_and_tail(tmp_path):
    result = run("head -c 100000 /dev/zero | tr '\\0' a; echo; echo END", tmp_path)
    assert result.stdout.startswith("a" * 100)
    assert result.stdout.endswith("END\n")
    assert "bytes left out" in result.stdout
    assert len(result.stdout.encode()) < OUTPUT_LIMIT_BYTES + 100


def test_a_timeout_kills_the_whole_group_including_a_grandchild(tmp_path):
    started = time.monotonic()
    result = run("sleep 1000 & echo $!; wait", tmp_path, timeout_s=0.3)
    assert time.monotonic() - started < DEADLINE_S
    assert result.timed_out is True and result.exit_code < 0
    grandchild = int(result.stdout.split()[0])
    wait_gone(grandchild)


def test_a_background_process_left_behind_is_killed_when_the_shell_exits(tmp_path):
    result = run("sleep 1000 >/dev/null 2>&1 & echo $!", tmp_path)
    assert result.exit_code == 0 and result.timed_out is False
    wait_gone(int(result.stdout.split()[0]))


def test_a_background_process_holding_the_pipe_does_not_stall_the_result(tmp_path):
    started = time.monotonic()
    result = run("sleep 1000 & echo $!", tmp_path, timeout_s=60)
    assert time.monotonic() - started < DEADLINE_S
    assert result.exit_code == 0 and result.timed_out is False
    wait_gone(int(result.stdout.split()[0]))


def test_cancelling_the_request_kills_the_group(tmp_path):
    pid_file = tmp_path / "pid"

    async def scenario():
        task = asyncio.create_task(
            run_command(f"sleep 1000 & echo $! > {pid_file}; wait", tmp_path, 60, os.environ)
        )
        deadline = time.monotonic() + DEADLINE_S
        while not pid_file.exists() or not pid_file.read_text().strip():
            assert time.monotonic() < deadline, "the command never started"
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return int(pid_file.read_text())

    wait_gone(asyncio.run(scenario()))


def _state(pid):
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def _group_members(pgid):
    members = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After the state: the parent's pid, then the process group.
        if int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def test_the_group_is_killed_while_the_shell_is_an_unreaped_zombie_then_reaped(
    tmp_path, monkeypatch
):
    seen = []
    kill_group = command._kill_group

    def observing_kill_group(pgid):
        # The shell has exited but must not be reaped yet: as a zombie it keeps its pid, the
        # group's id, from being handed to another process.
        seen.append(_state(pgid))
        kill_group(pgid)

    monkeypatch.setattr(command, "_kill_group", observing_kill_group)
    result = run("sleep 1000 >/dev/null 2>&1 & echo $! $$", tmp_path)
    grandchild, shell = map(int, result.stdout.split())
    assert seen == ["Z"]
    wait_gone(grandchild)
    # Reaped: no longer our child, and nothing of the group is left alive (a grandchild may
    # stay a zombie until whatever adopted it reaps it).
    with pytest.raises(ChildProcessError):
        os.waitpid(shell, os.WNOHANG)
    assert all(_state(pid) == "Z" for pid in _group_members(shell))


def test_a_timed_out_shell_is_killed_with_its_group_before_it_is_reaped(tmp_path, monkeypatch):
    states = []
    kill_group = command._kill_group

    def observing_kill_group(pgid):
        states.append(_state(pgid))
        kill_group(pgid)

    monkeypatch.setattr(command, "_kill_group", observing_kill_group)
    result = run("sleep 1000 & echo $! $$; wait", tmp_path, timeout_s=0.3)
    assert result.timed_out is True
    grandchild, shell = map(int, result.stdout.split())
    # First while the shell still runs (the timeout), then while it is a zombie.
    assert states[0] != "Z" and states[-1] == "Z", states
    wait_gone(grandchild)
    with pytest.raises(ChildProcessError):
        os.waitpid(shell, os.WNOHANG)


def test_without_pidfds_a_thread_waits_without_reaping_and_the_group_still_dies(
    tmp_path, monkeypatch
):
    def no_pidfds(pid):
        raise OSError(38, "Function not implemented")

    states = []
    kill_group = command._kill_group

    def observing_kill_group(pgid):
        states.append(_state(pgid))
        kill_group(pgid)

    monkeypatch.setattr(command.os, "pidfd_open", no_pidfds)
    monkeypatch.setattr(command, "_kill_group", observing_kill_group)
    result = run("sleep 1000 >/dev/null 2>&1 & echo $!; exit 5", tmp_path)
    assert result.exit_code == 5
    assert states == ["Z"]
    wait_gone(int(result.stdout))
