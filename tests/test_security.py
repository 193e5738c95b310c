"""Security properties from the README's review, each checked for real."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import sha256_file


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")}


def test_ephemeral_session_leaves_no_trace(env, tmp_path):
    before = snapshot(env.tmp)
    result = env.run("--session", "ephemeral", "search", "jack johnson")
    assert result.returncode == 0
    result = env.run("-v", "--session", "ephemeral", "download", "1000001")
    assert result.returncode == 0, result.stderr
    after = snapshot(env.tmp)
    added = sorted(set(after) - set(before))
    assert added == ["downloads", "downloads/Jack Johnson - Better Together.m4a"]
    song = env.download_dir / "Jack Johnson - Better Together.m4a"
    assert sha256_file(song) == env.expected_sha(1000001)


def test_state_and_worker_files_are_private(env):
    assert env.run("download", "-b", "1000001").returncode == 0
    assert env.run("wait", "--timeout", "30").returncode == 0
    assert os.stat(env.state_dir).st_mode & 0o777 == 0o700
    for path in env.state_dir.rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & 0o077 == 0, path


def test_no_credentials_in_logs_or_state(env):
    (env.home / ".netrc").write_text("machine 127.0.0.1 login user password secret\n")
    cfg = env.tmp / "c.toml"
    cfg.write_text('[headers]\nX-Api-Key = "hunter2"\n')
    extra = {"HALFTUNES_CONFIG": str(cfg)}
    result = env.run("-v", "download", "-b", f"{env.server.url}/auth/f.bin", env=extra)
    assert result.returncode == 0, result.stderr
    assert env.run("wait", "--timeout", "30", env=extra).returncode == 0
    result = env.run("-v", "download", f"{env.server.url}/auth/g.bin", env=extra)
    assert result.returncode == 0
    assert "secret" not in result.stderr and "hunter2" not in result.stderr
    for path in env.state_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"secret" not in data and b"hunter2" not in data, path
            assert b"dXNlcjpzZWNyZXQ" not in data, path  # base64 of user:secret
    sent = env.server.state.requests_for("/auth/")
    assert all(e["authorization"] for e in sent)


def test_id_completion_reads_the_state_file(env):
    assert env.run("download", "1000001", "1000002").returncode == 0
    result = env.run(
        env={
            "_HALFTUNES_COMPLETE": "complete_bash",
            "COMP_WORDS": "halftunes pause 10000",
            "COMP_CWORD": "2",
        }
    )
    assert result.returncode == 0
    assert "1000001" in result.stdout and "1000002" in result.stdout
