"""`--limit-rate` (one pace for all the command's transfers, and the worker's) and
`--checksum ALGO=HEX` (the file is kept only with that digest)."""

from __future__ import annotations

import hashlib
import time

from conftest import sha256_file

from halftunes_cli.testing.catalog import body_slice

T1, T2 = 1000001, 1000002


def file_url(env, name: str, size: int, seed: int = 7) -> str:
    return f"{env.server.url}/files/{name}?size={size}&seed={seed}"


def served_sha(env, url: str, algorithm: str = "sha256") -> str:
    import urllib.request

    with urllib.request.urlopen(url) as answer:
        return hashlib.new(algorithm, answer.read()).hexdigest()


def test_limit_rate_paces_all_transfers_of_the_command_together(env):
    for tid in (T1, T2):
        env.track(tid, size=300_000)
    began = time.monotonic()
    result = env.run("download", str(T1), str(T2), "--limit-rate", "200k")
    elapsed = time.monotonic() - began
    assert result.returncode == 0, result.stderr
    for path, tid in zip(result.stdout.split("\n"), (T1, T2), strict=False):
        assert sha256_file(path) == env.expected_sha(tid)
    floor = 600_000 / (200 * 1024)  # both files at 200 KiB/s together: 2.9 s
    assert floor * 0.95 <= elapsed < floor * 3, elapsed


def test_the_worker_paces_at_the_rate_its_command_asked(env):
    url = file_url(env, "paced.bin", 400_000)
    result = env.run("download", "-b", url, "--limit-rate", "256k")
    assert result.returncode == 0, result.stderr
    assert env.run("wait", timeout=30).returncode == 0
    (record,) = env.records().values()
    assert sha256_file(record["path"]) == served_sha(env, url)
    # (the server's socket buffers hide the pace from it: the transfer's own clock tells)
    assert record["metrics"]["time_total"] >= 0.95 * 400_000 / (256 * 1024)


def test_a_checksum_that_matches_keeps_the_file(env):
    for algorithm in ("sha256", "sha1", "md5"):
        url = file_url(env, f"good-{algorithm}.bin", 200_000)
        digest = served_sha(env, url, algorithm).upper()  # (either case)
        result = env.run("download", url, "--checksum", f"{algorithm}={digest}")
        assert result.returncode == 0, result.stderr
        assert (env.download_dir / f"good-{algorithm}.bin").stat().st_size == 200_000


def test_a_checksum_mismatch_keeps_nothing_and_says_both_digests(env):
    url = file_url(env, "bad.bin", 200_000)
    right, wrong = served_sha(env, url), "ab" * 32
    result = env.run("download", url, "--checksum", f"sha256={wrong}")
    assert result.returncode == 1
    assert wrong in result.stderr and right in result.stderr
    (record,) = env.records().values()
    assert record["status"] == "failed" and "checksum mismatch" in record["error"]
    assert list(env.download_dir.iterdir()) == []  # no final file, no partial
    again = env.run("resume", "--all")  # failed for good: not retried by --all
    assert again.returncode == 0 and len(env.server.state.requests_for("/files/bad.bin")) == 2


def test_a_queued_download_carries_its_checksum_to_the_worker(env):
    env.track(T1, size=100_000)
    result = env.run("download", "-b", str(T1), "--checksum", "md5=" + "0" * 32)
    assert result.returncode == 0, result.stderr
    assert env.run("wait", str(T1), timeout=30).returncode == 1
    record = env.record(str(T1))
    assert record["status"] == "failed" and "checksum mismatch" in record["error"]
    assert list(env.download_dir.iterdir()) == []
    state = env.server.state
    body = body_slice(state.seed_of(T1), 0, state.size_of(T1))
    good = hashlib.md5(body).hexdigest()
    assert env.run("download", str(T1), "--checksum", f"md5={good}").returncode == 0
    assert sha256_file(env.record(str(T1))["path"]) == env.expected_sha(T1)


def test_bad_limits_and_checksums_are_bad_input(env):
    for args, says in (
        (["--limit-rate", "fast"], "limit_rate = 'fast' is not valid"),
        (["--limit-rate", "-5k"], "is not valid"),
        (["--checksum", "sha256=xyz"], "--checksum must be sha256=HEX"),
        (["--checksum", "crc32=" + "0" * 8], "--checksum must be"),
        ([str(T2), "--checksum", "md5=" + "0" * 32], "--checksum is for one id or URL"),
    ):
        result = env.run("download", str(T1), *args)
        assert result.returncode == 2 and says in result.stderr, (args, result.stderr)
    assert env.preview_requests(T1) == [] and env.record(str(T1)) is None
