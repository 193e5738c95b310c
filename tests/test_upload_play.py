"""`halftunes upload` and `halftunes play` end to end."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path


def test_upload_put_is_intact(env, tmp_path):
    path = tmp_path / "song.bin"
    path.write_bytes(os.urandom(3_000_000))
    result = env.run(
        "upload",
        str(path),
        f"{env.server.url}/upload/song.bin",
        "--json",
        "--header",
        "X-Token: abc",
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["status"] == 201 and out["bytes_sent"] == 3_000_000
    got = env.server.state.uploads["song.bin"]
    assert got["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert got["method"] == "PUT"


def test_put_is_retried_on_503_but_post_is_not(env, tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"a" * 100_000)
    env.fault(path="/upload/put.bin", kind="status", status=503, retry_after=0)
    ok = env.run("upload", str(path), f"{env.server.url}/upload/put.bin")
    assert ok.returncode == 0, ok.stderr
    assert [e["status"] for e in env.server.state.requests_for("/upload/put.bin")] == [503, 201]
    env.fault(path="/upload/post.bin", kind="status", status=503, retry_after=0)
    bad = env.run("upload", "--method", "POST", str(path), f"{env.server.url}/upload/post.bin")
    assert bad.returncode == 1 and "HTTP 503" in bad.stderr
    assert len(env.server.state.requests_for("/upload/post.bin")) == 1


def test_upload_bad_input(env, tmp_path):
    missing = env.run("upload", str(tmp_path / "nope"), f"{env.server.url}/upload/x")
    assert missing.returncode == 2 and "no such file" in missing.stderr
    (tmp_path / "f").write_text("x")
    header = env.run("upload", str(tmp_path / "f"), f"{env.server.url}/upload/x", "--header", "bad")
    assert header.returncode == 2 and "--header" in header.stderr
    method = env.run("upload", str(tmp_path / "f"), f"{env.server.url}/upload/x", "--method", "GET")
    assert method.returncode == 2


def test_upload_of_50mb_runs_in_constant_memory(server, tmp_path):
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        for _ in range(50):
            f.write(os.urandom(1 << 20))
    code = f"""
from halftunes_cli import Session, SessionConfiguration
task = Session(SessionConfiguration.ephemeral()).upload_task({server.url + "/upload/big.bin"!r},
                                                              {str(path)!r})
task.run()
assert task.error is None, task.error
# VmHWM is this process's own peak (ru_maxrss would include the forking parent's)
print(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    peak_mib = int(result.stdout) / 1024
    assert peak_mib < 60, f"peak RSS {peak_mib:.1f} MiB"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert server.state.uploads["big.bin"]["sha256"] == digest


def _stub_player(bin_dir: Path, name: str, record: Path) -> None:
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / name
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\n')
    script.chmod(0o755)


def test_play_uses_the_first_player_found(env, tmp_path):
    path = env.run("download", "1000001").stdout.strip()
    record = tmp_path / "args.txt"
    bin_dir = tmp_path / "bin"
    _stub_player(bin_dir, "ffplay", record)
    result = env.run("play", "1000001", env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert record.read_text().splitlines() == ["-nodisp", "-autoexit", "-loglevel", "error", path]


def test_play_without_a_player_or_a_download(env, tmp_path):
    assert env.run("download", "1000001").returncode == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    result = env.run("play", "1000001", env={"PATH": str(empty)})
    assert result.returncode == 1 and "no audio player found" in result.stderr
    assert "ffplay" in result.stderr and "mpv" in result.stderr
    unknown = env.run("play", "31337")
    assert unknown.returncode == 2


def test_open_prints_or_reveals_the_folder(env, tmp_path):
    assert env.run("download", "1000001").returncode == 0
    result = env.run("open", "1000001")
    assert result.returncode == 0 and result.stdout.strip() == str(env.download_dir)
    record = tmp_path / "args.txt"
    bin_dir = tmp_path / "bin"
    _stub_player(bin_dir, "xdg-open", record)
    result = env.run("open", "1000001", "--reveal", env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert result.returncode == 0
    assert record.read_text().splitlines() == [str(env.download_dir)]
    assert env.run("open", "5").returncode == 2
