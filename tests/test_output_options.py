"""-P / -o as curl, wget and yt-dlp users expect them; every stored path absolute."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import reap_children, sha256_file

T1, T2 = 1000001, 1000002
NAME1 = "Jack Johnson - Better Together.m4a"


def test_o_names_the_file_relative_to_the_folder(env, tmp_path):
    result = env.run("download", str(T1), "-P", str(tmp_path / "p"), "-o", "song.m4a")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "p" / "song.m4a")
    assert sha256_file(tmp_path / "p" / "song.m4a") == env.expected_sha(T1)


def test_a_template_makes_safe_subfolders(env):
    hostile = next(
        t for t in env.server.state.tracks.values() if t["trackName"] == "../../etc/passwd"
    )["trackId"]
    result = env.run(
        "download",
        str(T1),
        str(hostile),
        "-P",
        str(env.download_dir),
        "-o",
        "{artist}/{album}/{title}.{ext}",
    )
    assert result.returncode == 0, result.stderr
    first, second = (Path(p) for p in result.stdout.strip().split("\n"))
    assert first == env.download_dir / "Jack Johnson" / "In Between Dreams" / "Better Together.m4a"
    assert second.parent == env.download_dir / "Unknown" / "Hostile Names"  # no escape
    assert second.name.endswith(".m4a") and "/" not in second.name
    assert sha256_file(second) == env.expected_sha(hostile)


def test_a_plain_name_for_several_ids_and_an_unknown_field_are_bad_input(env):
    result = env.run("download", str(T1), str(T2), "-o", "song.m4a")
    assert result.returncode == 2 and "names one file, but 2 ids" in result.stderr
    result = env.run("download", str(T1), "-o", "{singer}.m4a")
    assert result.returncode == 2 and "unknown field {singer}" in result.stderr
    assert env.record(T1) is None


def test_o_with_an_existing_folder_or_a_slash_is_the_folder(env, tmp_path):
    folder = tmp_path / "existing"
    folder.mkdir()
    result = env.run("download", str(T1), "-o", str(folder))
    assert result.returncode == 0, result.stderr
    assert "is a folder" in result.stderr
    assert result.stdout.strip() == str(folder / NAME1)
    result = env.run("download", str(T2), "-o", str(tmp_path / "new") + "/")
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).parent == tmp_path / "new"


def test_relative_paths_are_stored_absolute_foreground_and_background(env, tmp_path):
    work = tmp_path / "cwd"
    work.mkdir()
    fg = env.run_process("download", str(T1), "-P", "rel", env={}, cwd=work)
    assert fg.returncode == 0, fg.stderr
    assert env.record(T1)["path"] == str(work / "rel" / NAME1)
    bg = env.run_process("download", "-b", str(T2), "-o", "sub/{title}.{ext}", cwd=work)
    assert bg.returncode == 0, bg.stderr
    assert env.run("wait", "--timeout", "30").returncode == 0
    reap_children()
    record = env.record(T2)
    assert record["path"] == str(work / "sub" / "Banana Pancakes.m4a")
    assert sha256_file(record["path"]) == env.expected_sha(T2)
    # open works from anywhere: the path does not depend on the working directory
    assert env.run_process("open", str(T1), cwd="/").stdout.strip() == str(work / "rel")


def test_a_relative_o_is_relative_to_the_current_directory_and_printed_normal(env, tmp_path):
    """As curl -o and wget -O take it; -P, when given, is what it is relative to."""
    work = tmp_path / "work"
    work.mkdir()
    result = env.run_process("download", str(T1), "-o", "song.m4a", cwd=work)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(work / "song.m4a")
    assert sha256_file(work / "song.m4a") == env.expected_sha(T1)
    assert not (env.download_dir / "song.m4a").exists()
    result = env.run_process("download", str(T2), "-o", "../up/x.m4a", cwd=work)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "up" / "x.m4a")  # no `..` left in it
    assert env.record(T2)["path"] == str(tmp_path / "up" / "x.m4a")
    assert sha256_file(tmp_path / "up" / "x.m4a") == env.expected_sha(T2)


def test_a_folder_that_takes_no_file_is_refused_before_any_record(env):
    """/proc exists and, for root, passes an access() check; only writing tells."""
    result = env.run("download", str(T1), "-o", "/proc/version")
    assert result.returncode == 1
    assert result.stderr.startswith("halftunes: error: download dir /proc is not writable")
    assert "Traceback" not in result.stderr
    assert env.record(T1) is None
    result = env.run("download", str(T1), "-P", "/proc/no-such-dir")
    assert result.returncode == 1 and "hint: choose another folder with -P DIR" in result.stderr
    assert env.record(T1) is None


def test_an_id_downloaded_elsewhere_says_where_and_force_fetches_it_here(env, tmp_path):
    assert env.run("download", str(T1)).returncode == 0
    again = env.run("download", str(T1), "-P", str(tmp_path / "other"))
    assert again.returncode == 0
    assert f"already downloaded to {env.download_dir / NAME1}" in again.stderr
    assert f"`--force` fetches it to {tmp_path / 'other' / NAME1}" in again.stderr
    assert not (tmp_path / "other").exists() or not any((tmp_path / "other").iterdir())
    forced = env.run("download", str(T1), "-P", str(tmp_path / "other"), "--force")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.strip() == str(tmp_path / "other" / NAME1)
    assert sha256_file(tmp_path / "other" / NAME1) == env.expected_sha(T1)
    assert env.record(T1)["path"] == str(tmp_path / "other" / NAME1)
    assert (env.download_dir / NAME1).exists()  # the old file is never touched


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_background_files_follow_the_umask_of_the_queuing_command(env, umask, mode):
    result = env.run_process("download", "-b", str(T1), umask=umask)
    assert result.returncode == 0, result.stderr
    assert env.run("wait", "--timeout", "30").returncode == 0
    reap_children()
    path = env.record(T1)["path"]
    assert os.stat(path).st_mode & 0o777 == mode
    assert env.state_dir.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("name", ["/dev/null", "-"])
def test_o_that_names_no_file_is_bad_input(env, name):
    """curl's idioms for "discard" and "standard output": a resumable download needs a file."""
    result = env.run("download", str(T1), "-o", name)
    assert result.returncode == 2
    assert result.stderr.startswith(f"halftunes: error: -o {name} ")
    assert env.record(T1) is None
    assert not Path("/dev/null (1000001)").exists() and not Path("-").exists()
