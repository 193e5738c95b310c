"""Bad input, one row each: the exit code, the message, and that nothing was lost."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import pytest
from conftest import sha256_file

DONE, PARTIAL, FRESH = 1000002, 1000003, 1000001


def hostile(env, name: str) -> str:
    return str(
        next(t for t in env.server.state.tracks.values() if t["trackName"] == name)["trackId"]
    )


@pytest.fixture
def world(env):
    """A finished download and a kept partial that no bad input may touch."""
    env.track(PARTIAL, size=1_000_000)
    assert env.run("download", str(DONE)).returncode == 0
    env.fault(path=f"/previews/{PARTIAL}/", kind="drop", after=300_000)
    env.fault(path=f"/previews/{PARTIAL}/", kind="status", status=403, times=1)
    assert env.run("download", str(PARTIAL)).returncode == 1
    env.server.state.faults.clear()
    done = env.state_record(DONE)
    part = env.state_record(PARTIAL)
    assert os.path.getsize(part["part_path"]) == 300_000
    env.done_path = Path(done["path"])
    env.done_sha = sha256_file(env.done_path)
    env.part_path = Path(part["part_path"])
    return env


ROWS = [
    # id, args (or a callable building them), exit code, fragment in stderr
    ("unknown id", ["download", "999"], 2, "no track with id 999"),
    ("not a number", ["download", "12ab"], 2, "neither a track id nor a URL"),
    ("ftp scheme", ["download", "ftp://example.com/a.mp3"], 2, "unsupported URL scheme (ftp:)"),
    (
        "gopher scheme",
        ["download", "gopher://example.com/a"],
        2,
        "unsupported URL scheme (gopher:)",
    ),
    ("javascript", ["download", "javascript:alert(1)"], 2, "unsupported URL scheme (javascript:)"),
    ("plain http remote", ["download", "http://example.com/a.mp3"], 2, "App Transport Security"),
    ("empty term", ["search", ""], 2, "search term is empty"),
    ("blank term", ["search", "   "], 2, "search term is empty"),
    ("limit 0", ["search", "x", "--limit", "0"], 2, "between 1 and 200"),
    ("limit 201", ["search", "x", "--limit", "201"], 2, "between 1 and 200"),
    ("limit abc", ["search", "x", "--limit", "abc"], 2, "--limit"),
    ("2000-char term", ["search", "y" * 2000], 2, "too long"),
    ("bad session", ["--session", "turbo", "list"], 2, "--session must be"),
    ("unknown id to pause", ["pause", "777"], 2, "no download with id 777"),
    ("unknown id to resume", ["resume", "777"], 2, "no download with id 777"),
    ("unknown id to cancel", ["cancel", "777"], 2, "no download with id 777"),
    ("pause nothing", ["pause"], 2, "or use --all"),
    ("html api", "html", 1, "not JSON"),
    ("malformed config", "config", 2, "not valid TOML"),
    ("download dir is a file", "dir-file", 1, "not a directory"),
]


@pytest.mark.parametrize("name, args, code, fragment", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_row(world, tmp_path, name, args, code, fragment):
    env = world
    extra = {}
    if args == "html":
        env.fault(path="/search", kind="html")
        args = ["search", "jack"]
    elif args == "config":
        cfg = tmp_path / "bad.toml"
        cfg.write_text("retries = = 3\n")
        extra["HALFTUNES_CONFIG"] = str(cfg)
        args = ["download", str(FRESH)]
    elif args == "dir-file":
        blocker = tmp_path / "blocker"
        blocker.write_text("x")
        args = ["download", str(FRESH), "-P", str(blocker)]
    result = env.run(*args, env=extra)
    assert result.returncode == code, result.stderr
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 4  # click usage errors take 4
    # nothing lost: the finished file and the partial are intact...
    assert sha256_file(env.done_path) == env.done_sha
    assert env.part_path.stat().st_size == 300_000
    # ...and so are the records
    assert env.state_record(DONE)["status"] == "completed"
    assert env.state_record(PARTIAL)["bytes_received"] == 300_000


def test_unwritable_download_dir(env, tmp_path):
    # Root writes through any mode bits, so as root (CI) use a folder the kernel refuses.
    locked = Path("/proc/sys")
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
    assert not os.access(locked, os.W_OK)
    result = env.run("download", str(FRESH), "-P", str(locked))
    assert result.returncode == 1 and "not writable" in result.stderr
    assert env.state_record(str(FRESH)) is None


def test_full_disk_keeps_partial_and_record_then_resumes(env):
    env.track(FRESH, size=2_000_000)
    assert env.run("search", "jack").returncode == 0  # state file exists before the limit

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (700_000, 700_000))

    import subprocess

    from conftest import HALFTUNES

    proc = subprocess.run(
        [HALFTUNES, "download", str(FRESH)],
        env=env.env,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit_file_size,
    )
    assert proc.returncode == 1, proc.stderr
    assert "disk full" in proc.stderr and "Traceback" not in proc.stderr
    rec = env.state_record(FRESH)
    assert rec["status"] == "failed"
    assert os.path.getsize(rec["part_path"]) == rec["bytes_received"] == 700_000
    result = env.run("resume", str(FRESH))
    assert result.returncode == 0, result.stderr
    assert sha256_file(rec["path"]) == env.expected_sha(FRESH)
    assert env.preview_requests(FRESH)[-1]["range"] == env.resume_range(700_000)


# The 10 GB Content-Length lie is a row of
# test_download.py::test_a_body_shorter_than_announced_is_never_completed_early.


def test_content_range_that_does_not_match_the_request(env):
    env.track(FRESH, size=1_000_000)
    env.fault(path=f"/previews/{FRESH}/", kind="drop", after=400_000)
    env.fault(path=f"/previews/{FRESH}/", kind="bad_content_range")
    result = env.run("download", str(FRESH))
    assert result.returncode == 0, result.stderr
    assert sha256_file(result.stdout.strip()) == env.expected_sha(FRESH)
    statuses = [(e["status"], e["range"]) for e in env.preview_requests(FRESH)]
    assert statuses == [(200, None), (206, env.resume_range(400_000)), (200, None)]
