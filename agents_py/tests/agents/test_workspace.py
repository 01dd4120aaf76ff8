"""Tests of mnemosyne.agents.workspace: per-plan directories and the confinement of paths."""

import os

import pytest

from mnemosyne.agents.workspace import (
    DEFAULT_ROOT_NAME,
    WRITE_LIMIT_BYTES,
    Workspace,
    WorkspaceError,
    workspace_dir_name,
    workspace_root,
)


@pytest.fixture
def workspace(tmp_path):
    return Workspace(tmp_path / "root" / "plan")


@pytest.fixture
def outside(tmp_path):
    """A directory next to the workspace holding a secret file."""
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "secret.txt").write_text("top secret")
    return directory


def test_the_root_comes_from_the_environment_or_the_temporary_directory(tmp_path):
    assert workspace_root({"MNEMOSYNE_WORKSPACE_ROOT": str(tmp_path)}) == tmp_path
    assert workspace_root({}).name == DEFAULT_ROOT_NAME


def test_a_plans_workspace_is_its_sanitised_id_under_the_root(tmp_path):
    workspace = Workspace.for_plan("p1", {"MNEMOSYNE_WORKSPACE_ROOT": str(tmp_path)})
    assert workspace.path == tmp_path / "p1"


@pytest.mark.parametrize("plan_id", ["a/b", "../up", "..", ".", "", "x y", "é"])
def test_unsafe_plan_ids_become_distinct_plain_names(plan_id):
    name = workspace_dir_name(plan_id)
    assert name not in {"", ".", ".."}
    assert "/" not in name and not name.startswith(".")
    assert all(c.isalnum() or c in "._-" for c in name)


def test_ids_that_sanitise_alike_still_get_different_directories():
    assert workspace_dir_name("a/b") != workspace_dir_name("a_b")
    assert workspace_dir_name("a_b") == "a_b"


def test_the_workspace_is_created_on_first_use(workspace):
    assert not workspace.path.exists()
    workspace.write_text("notes.md", "hello")
    assert (workspace.path / "notes.md").read_text() == "hello"


def test_a_workspace_path_that_is_a_symlink_is_refused(tmp_path, outside):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "plan").symlink_to(outside)
    with pytest.raises(WorkspaceError, match="not a directory"):
        Workspace(tmp_path / "root" / "plan").ensure()


@pytest.mark.parametrize("path", ["/etc/passwd", "/"])
def test_absolute_paths_are_refused(workspace, path):
    with pytest.raises(WorkspaceError, match="absolute"):
        workspace.resolve(path)


@pytest.mark.parametrize("path", ["..", "../x", "a/../../x", "./../x"])
def test_dot_dot_escapes_are_refused(workspace, path):
    with pytest.raises(WorkspaceError, match="outside the workspace"):
        workspace.resolve(path)


def test_dot_dot_that_stays_inside_is_allowed(workspace):
    assert workspace.resolve("a/../b.txt") == workspace.ensure() / "b.txt"


@pytest.mark.parametrize("path", ["", "  ", "a\0b"])
def test_empty_paths_and_nul_are_refused(workspace, path):
    with pytest.raises(WorkspaceError):
        workspace.resolve(path)


def test_a_symlink_to_a_file_outside_cannot_be_read_or_written(workspace, outside):
    root = workspace.ensure()
    (root / "leak").symlink_to(outside / "secret.txt")
    with pytest.raises(WorkspaceError, match="symbolic link"):
        workspace.read_text("leak")
    with pytest.raises(WorkspaceError, match="symbolic link"):
        workspace.write_text("leak", "overwritten")
    assert (outside / "secret.txt").read_text() == "top secret"


def test_a_new_file_through_a_symlinked_directory_outside_is_refused(workspace, outside):
    root = workspace.ensure()
    (root / "out").symlink_to(outside, target_is_directory=True)
    with pytest.raises(WorkspaceError, match="symbolic link"):
        workspace.write_text("out/new.txt", "x")
    with pytest.raises(WorkspaceError, match="symbolic link"):
        workspace.write_text("out/deeper/new.txt", "x")
    with pytest.raises(WorkspaceError, match="symbolic link"):
        workspace.read_text("out/secret.txt")
    with pytest.raises(WorkspaceError, match="symbolic link"):
        workspace.list_directory("out")
    assert sorted(os.listdir(outside)) == ["secret.txt"]


def test_a_dangling_symlink_pointing_outside_is_not_followed_on_create(workspace, outside):
    root = workspace.ensure()
    (root / "dangling").symlink_to(outside / "planted.txt")
    with pytest.raises(WorkspaceError, match="symbolic link"):
        workspace.write_text("dangling", "x")
    assert not (outside / "planted.txt").exists()


def test_a_symlink_up_and_back_through_dot_dot_is_judged_by_its_real_path(workspace, outside):
    root = workspace.ensure()
    (root / "out").symlink_to(outside, target_is_directory=True)
    # Lexically `out/../x` is `x`, but the system resolves `out` first and lands outside.
    with pytest.raises(WorkspaceError, match="symbolic link"):
        workspace.resolve("out/../outside/secret.txt")


def test_symlinks_that_stay_inside_are_followed(workspace):
    root = workspace.ensure()
    (root / "real").mkdir()
    (root / "real" / "a.txt").write_text("A")
    (root / "alias").symlink_to(root / "real", target_is_directory=True)
    assert workspace.read_text("alias/a.txt").text == "A"
    # Written through the link, reported by the real path.
    assert workspace.write_text("alias/b.txt", "B") == ("real/b.txt", False)


def test_write_creates_parents_and_reports_whether_it_replaced(workspace):
    assert workspace.write_text("src/pkg/mod.py", "x = 1\n") == ("src/pkg/mod.py", False)
    assert workspace.write_text("src/pkg/mod.py", "x = 2\n") == ("src/pkg/mod.py", True)
    assert workspace.read_text("src/pkg/mod.py").text == "x = 2\n"


def test_writing_over_a_directory_or_too_much_is_refused(workspace):
    workspace.write_text("d/f", "")
    with pytest.raises(WorkspaceError, match="directory"):
        workspace.write_text("d", "x")
    with pytest.raises(WorkspaceError, match="at most"):
        workspace.write_text("big", "x" * (WRITE_LIMIT_BYTES + 1))


def test_reading_is_cut_at_the_limit(workspace):
    workspace.write_text("long.txt", "abcdef")
    read = workspace.read_text("long.txt", limit=4)
    assert (read.text, read.size, read.truncated) == ("abcd", 6, True)
    assert workspace.read_text("long.txt").truncated is False


def test_reading_a_missing_file_or_a_directory_is_an_error(workspace):
    workspace.write_text("d/f", "")
    with pytest.raises(WorkspaceError, match="does not exist"):
        workspace.read_text("nope.txt")
    with pytest.raises(WorkspaceError, match="directory"):
        workspace.read_text("d")


def test_edit_replaces_exactly_one_occurrence(workspace):
    workspace.write_text("a.py", "x = 1\ny = 2\n")
    assert workspace.edit_text("a.py", "y = 2", "y = 3") == "a.py"
    assert workspace.read_text("a.py").text == "x = 1\ny = 3\n"


def test_edit_refuses_a_missing_or_ambiguous_match_and_leaves_the_file_alone(workspace):
    workspace.write_text("a.py", "x = 1\nx = 1\n")
    with pytest.raises(WorkspaceError, match="not found"):
        workspace.edit_text("a.py", "z = 1", "z = 2")
    with pytest.raises(WorkspaceError, match="occurs 2 times"):
        workspace.edit_text("a.py", "x = 1", "x = 2")
    with pytest.raises(WorkspaceError, match="must not be empty"):
        workspace.edit_text("a.py", "", "x")
    assert workspace.read_text("a.py").text == "x = 1\nx = 1\n"


def test_edit_refuses_a_file_that_is_not_utf8(workspace):
    root = workspace.ensure()
    (root / "bin").write_bytes(b"\xff\xfe old")
    with pytest.raises(WorkspaceError, match="not UTF-8"):
        workspace.edit_text("bin", "old", "new")
    assert (root / "bin").read_bytes() == b"\xff\xfe old"


def test_listing_marks_directories_and_links_and_is_sorted(workspace):
    root = workspace.ensure()
    workspace.write_text("b.txt", "")
    workspace.write_text("a/x", "")
    (root / "c").symlink_to(root / "b.txt")
    assert workspace.list_directory() == ["a/", "b.txt", "c@"]
    assert workspace.list_directory("a") == ["x"]
    with pytest.raises(WorkspaceError, match="not a directory"):
        workspace.list_directory("b.txt")
