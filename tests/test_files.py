"""Reading JSONL files (blank lines skipped, every error naming the file and the line), putting finished files
and folders in place, and a run directory's lock."""

import os
import sys

import pytest

from lit_reason.files import RunDirectoryInUse, RunLock, jsonl_records, replace_path, restore_interrupted_replacement
from tests.helpers.run_lock import held_by_another_process


def test_records_come_with_where_they_are(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n  \n[2, 3]\n')
    assert list(jsonl_records(path)) == [(f"{path}:1", {"a": 1}), (f"{path}:4", [2, 3])]


def test_a_byte_order_mark_is_read_past(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n{"a": 2}\n')  # was "not valid JSON (Unexpected UTF-8 BOM)"
    assert [value for _, value in jsonl_records(path)] == [{"a": 1}, {"a": 2}]


def test_bad_lines_are_errors_naming_file_line_and_cause(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": "caf\xe9"}\n')
    with pytest.raises(
        ValueError, match=r"a\.jsonl:2: not UTF-8 text \(byte 0xe9 at column 11\); save the file as UTF-8"
    ):
        list(jsonl_records(path))
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match=r"a\.jsonl:2: not valid JSON \(Expecting value\)"):
        list(jsonl_records(path))
    path.write_text('{"a": 1}\n' + "[" * 100_000 + "]" * 100_000 + "\n")  # was a bare RecursionError
    with pytest.raises(ValueError, match=r"a\.jsonl:2: JSON nested too deeply to read"):
        list(jsonl_records(path))
    path.write_text('{"a": 1}\n{"question": "\\ud83d alone"}\n')  # parsed, then broke a tokenizer mid-run
    with pytest.raises(ValueError, match=r"a\.jsonl:2: a string holds a lone UTF-16 surrogate escape"):
        list(jsonl_records(path))
    path.write_text('{"a": 1}\n{"answer": ' + "9" * 5000 + "}\n")  # was Python's bare digit-limit ValueError
    with pytest.raises(ValueError, match=r"a\.jsonl:2: not readable JSON \(Exceeds the limit"):
        list(jsonl_records(path))


@pytest.mark.slow  # starts a process
@pytest.mark.skipif(sys.platform == "win32", reason="no flock: runs are not locked there")
def test_a_run_directory_is_locked_by_one_process_and_released_when_it_dies(tmp_path):
    # Nothing stopped a second process from writing or deleting a run under way (a study resuming the step that a
    # launcher runs; a test logged into a running fit's directory), which loses its records.
    log_dir = tmp_path / "run"
    with held_by_another_process(log_dir) as holder:
        with pytest.raises(
            RunDirectoryInUse, match=rf"{log_dir} is being written by another process \(pid {holder.pid}"
        ):
            RunLock(log_dir).acquire()
        with pytest.raises(RunDirectoryInUse):
            RunLock(log_dir).check_free()
    lock = RunLock(log_dir)  # killed: the OS released it
    lock.check_free()
    lock.acquire()
    lock.acquire()  # held already: nothing to do
    with pytest.raises(RunDirectoryInUse, match=f"pid {os.getpid()}"):
        RunLock(log_dir).acquire()  # one holder, even within a process
    lock.release()
    RunLock(tmp_path / "never locked").check_free()
    assert not (tmp_path / "never locked").exists()


def test_a_filesystem_without_flock_runs_unlocked_with_a_warning(tmp_path, monkeypatch):
    # Lustre mounted noflock, some FUSE and NFS mounts: flock fails with ENOSYS, and the run crashed on it.
    from lit_reason import files

    def no_flock(fd, operation):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(files.fcntl, "flock", no_flock)
    with pytest.warns(UserWarning, match="is not locked .*Function not implemented"):
        RunLock(tmp_path).acquire()


@pytest.mark.parametrize("before", ["nothing", "file", "folder"])
@pytest.mark.parametrize("after", ["file", "folder"])
def test_a_finished_file_or_folder_replaces_whatever_was_in_its_place(tmp_path, before, after):
    """A checkpoint is a file, or a folder when sharded: a run may switch between the two."""

    def make(path, kind, text):
        if kind == "file":
            path.write_text(text)
        elif kind == "folder":
            path.mkdir()
            (path / "part").write_text(text)

    target, staging = tmp_path / "last.ckpt", tmp_path / ".last.ckpt.partial"
    make(target, before, "old")
    make(staging, after, "new")
    replace_path(staging, target)
    assert (target if after == "file" else target / "part").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no staging or .previous left


def test_a_crash_between_the_two_renames_of_a_folder_is_undone(tmp_path):
    """A sharded checkpoint is a folder, replaced in two renames: killed between them, last.ckpt was missing."""
    target = tmp_path / "last.ckpt"
    assert not restore_interrupted_replacement(target)  # nothing there, nothing beside it
    (tmp_path / ".last.ckpt.previous").mkdir()
    assert restore_interrupted_replacement(target) and target.is_dir()
    assert not restore_interrupted_replacement(target)  # in place: left as it is
