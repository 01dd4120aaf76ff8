"""Per-plan workspaces: the one directory the executor's tools may touch, and its file tools.

Each plan gets `$MNEMOSYNE_WORKSPACE_ROOT/<plan directory>`, created on first use, where the
plan directory is the plan id made safe for a file name. The supervisor always sets the root:
`[executor] workspace_dir`, else `<state-dir>/workspaces` (src/process/sandbox.rs). A worker
started without it, as in tests, falls back to `<tempdir>/mnemosyne-workspaces`. The tasks of
one plan share it, so a later task can build on an earlier one's files; the reviewer reads the
same directory to inspect what was produced.

Every path a model gives is relative to the workspace and must stay inside it. Absolute paths
and `..` that climbs out are refused by name; after that, the path is resolved with every
symbolic link followed, and the real path must still lie inside the workspace's real path.
That second check also covers files that do not exist yet: resolving a missing file resolves
its existing parent directories, so a new file under a symlinked directory that points outside
is refused. Files are then opened by their resolved path, with `O_NOFOLLOW`, so a link swapped
in between the check and the open is not followed either.

The older design had no sandbox at all: its tools took any absolute path and ran commands in
whatever directory the host happened to be in.

The methods here are synchronous and small (sizes are capped); callers on the event loop run
them with `asyncio.to_thread`.
"""

import contextlib
import hashlib
import os
import posixpath
import re
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

WORKSPACE_ROOT_ENV = "MNEMOSYNE_WORKSPACE_ROOT"
DEFAULT_ROOT_NAME = "mnemosyne-workspaces"

# A file read for the model is cut here: a tool result lands in the conversation, which is
# resent on every turn, so one huge file would crowd out everything else.
READ_LIMIT_BYTES = 256 * 1024
# The most a model may write in one create_file or edit_file.
WRITE_LIMIT_BYTES = 1024 * 1024
# Entries a directory listing reports before it says how many it left out.
LIST_LIMIT_ENTRIES = 500
# Plan directory names are cut to this many characters (before the hash suffix).
DIR_NAME_MAX_CHARS = 64

_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")


class WorkspaceError(Exception):
    """A tool request the workspace refuses; the message is written for the model to read."""


def workspace_root(environ: Mapping[str, str]) -> Path:
    """The directory holding every plan's workspace."""
    configured = environ.get(WORKSPACE_ROOT_ENV, "").strip()
    if configured:
        return Path(configured).expanduser().absolute()
    return Path(tempfile.gettempdir()) / DEFAULT_ROOT_NAME


def workspace_dir_name(plan_id: str) -> str:
    """A file name for a plan's workspace: the plan id when it is already safe.

    Any id that had to change gets a hash of the original appended, so two ids that sanitise
    to the same name (`a/b` and `a_b`) still get different directories.
    """
    name = _UNSAFE_NAME_CHARS.sub("_", plan_id).lstrip(".")[:DIR_NAME_MAX_CHARS]
    if name == plan_id and name:
        return name
    digest = hashlib.sha256(plan_id.encode("utf-8")).hexdigest()[:12]
    return f"{name or 'plan'}-{digest}"


@dataclass(frozen=True)
class FileText:
    """Text read from a workspace file; `truncated` says whether the limit cut it."""

    text: str
    size: int
    truncated: bool


class Workspace:
    """One plan's workspace directory and the confined file operations on it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def for_plan(cls, plan_id: str, environ: Mapping[str, str]) -> "Workspace":
        return cls(workspace_root(environ) / workspace_dir_name(plan_id))

    def ensure(self) -> Path:
        """Creates the workspace if needed; its real path.

        The fallback root is in the shared temporary directory, where another user could have
        planted a directory or a link under the plan's name; a workspace that is not a real
        directory owned by this user is refused rather than written into.
        """
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            self.path.mkdir(mode=0o700)
        info = os.lstat(self.path)
        if not stat.S_ISDIR(info.st_mode):
            raise WorkspaceError("the workspace path exists but is not a directory")
        if info.st_uid != os.getuid():
            raise WorkspaceError("the workspace directory belongs to another user")
        return Path(os.path.realpath(self.path))

    def resolve(self, relative: str) -> Path:
        """The real path of `relative` inside the workspace; raises WorkspaceError if outside."""
        if not relative or not relative.strip():
            raise WorkspaceError("path must not be empty")
        if "\0" in relative:
            raise WorkspaceError("path must not contain a NUL character")
        if relative.startswith("/"):
            raise WorkspaceError(
                f"path {relative!r} is absolute; give a path relative to the workspace"
            )
        normal = posixpath.normpath(relative)
        if normal == ".." or normal.startswith("../"):
            raise WorkspaceError(f"path {relative!r} leads outside the workspace")
        root = self.ensure()
        # The path as given, not `normal`: the system resolves a link before the `..` after
        # it, and so must this check, or `link/..` would mean different things to each.
        target = Path(os.path.realpath(root / relative))
        if target != root and root not in target.parents:
            raise WorkspaceError(
                f"path {relative!r} leads outside the workspace through a symbolic link"
            )
        return target

    def relative(self, real: Path) -> str:
        """The workspace-relative form of a real path that `resolve` returned."""
        rel = real.relative_to(self.ensure()).as_posix()
        return rel or "."

    def read_text(self, relative: str, limit: int = READ_LIMIT_BYTES) -> FileText:
        """The file's text, cut at `limit` bytes; bytes that are not UTF-8 are replaced."""
        data, size = self._read_bytes(relative, limit)
        truncated = len(data) > limit
        return FileText(data[:limit].decode("utf-8", errors="replace"), size, truncated)

    def _read_bytes(self, relative: str, limit: int) -> tuple[bytes, int]:
        """At most `limit + 1` bytes of a regular file (one more shows it was cut), and its
        size."""
        target = self.resolve(relative)
        if target.is_dir():
            raise WorkspaceError(f"{relative!r} is a directory; use list_directory")
        if not target.exists():
            raise WorkspaceError(f"file {relative!r} does not exist")
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise WorkspaceError(f"{relative!r} is not a regular file")
            return file.read(limit + 1), info.st_size

    def write_text(self, relative: str, content: str) -> tuple[str, bool]:
        """Writes `content` to a file, creating parent directories; (real relative path,
        whether the file existed before)."""
        data = content.encode("utf-8")
        if len(data) > WRITE_LIMIT_BYTES:
            raise WorkspaceError(
                f"content is {len(data)} bytes; one write may be at most {WRITE_LIMIT_BYTES}"
            )
        target = self.resolve(relative)
        if target.is_dir():
            raise WorkspaceError(f"{relative!r} is a directory")
        existed = target.exists()
        target.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        fd = os.open(target, flags, 0o644)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        return self.relative(target), existed

    def edit_text(self, relative: str, old: str, new: str) -> str:
        """Replaces the one occurrence of `old` with `new`; the real relative path.

        Exactly one occurrence, so an edit never lands somewhere the model did not mean: the
        older design replaced the first match, whichever that was.
        """
        if not old:
            raise WorkspaceError("old must not be empty")
        data, _ = self._read_bytes(relative, WRITE_LIMIT_BYTES)
        if len(data) > WRITE_LIMIT_BYTES:
            raise WorkspaceError(f"{relative!r} is too large to edit (over {WRITE_LIMIT_BYTES})")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            # Writing back a lossy decoding would corrupt the file.
            raise WorkspaceError(f"{relative!r} is not UTF-8 text and cannot be edited") from None
        count = text.count(old)
        if count == 0:
            raise WorkspaceError(f"old text not found in {relative!r}; read the file first")
        if count > 1:
            raise WorkspaceError(
                f"old text occurs {count} times in {relative!r}; include more surrounding "
                "text so it matches exactly once"
            )
        path, _ = self.write_text(relative, text.replace(old, new, 1))
        return path

    def list_directory(self, relative: str = ".") -> list[str]:
        """Entry names, sorted; directories end in `/`, symbolic links in `@`."""
        target = self.resolve(relative)
        if not target.is_dir():
            raise WorkspaceError(f"{relative!r} is not a directory")
        entries = []
        with os.scandir(target) as scan:
            for entry in scan:
                if entry.is_symlink():
                    entries.append(entry.name + "@")
                elif entry.is_dir():
                    entries.append(entry.name + "/")
                else:
                    entries.append(entry.name)
        entries.sort()
        if len(entries) > LIST_LIMIT_ENTRIES:
            left_out = len(entries) - LIST_LIMIT_ENTRIES
            entries = [*entries[:LIST_LIMIT_ENTRIES], f"... and {left_out} more"]
        return entries
