"""A job on a Dask cluster whose machines share no disk: the job store and the output on an
S3 server (moto), three workers that cannot see the client's files, one of them killed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from halftunes_cli.testing.catalog import body_sha256

ITEMS, SHARD, MISSING, FLAKY = 3000, 100, 30, 30
SIZE = 8_000


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs t /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


class Cluster:
    """`dask scheduler` and `dask worker` processes, each worker a machine of its own: its own
    HOME, TMPDIR and working dir outside the client's, and (where allowed) a mount namespace
    in which the client's folder is an empty tmpfs."""

    def __init__(self, root: Path, hidden: Path, environ: dict[str, str]):
        self.root, self.hidden, self.environ = root, hidden, environ
        self.isolated = _can_unshare()
        self.procs: list[subprocess.Popen] = []
        self.workers: list[tuple[subprocess.Popen, Path]] = []
        self.file = root / "scheduler.json"

    def start(self, count: int) -> str:
        scheduler = [sys.executable, "-m", "distributed.cli.dask_scheduler", "--port", "0"]
        scheduler += ["--host", "127.0.0.1", "--no-dashboard", "--scheduler-file", str(self.file)]
        self._spawn(scheduler, self.root)
        _wait(lambda: self.file.exists() and self.file.stat().st_size > 0, "the scheduler")
        for i in range(count):
            home = self.root / f"machine{i}"
            (home / "tmp").mkdir(parents=True)
            worker = [sys.executable, "-m", "distributed.cli.dask_worker"]
            worker += ["--scheduler-file", str(self.file), "--nthreads", "1", "--no-nanny"]
            worker += ["--no-dashboard", "--local-directory", str(home / "dask")]
            if self.isolated:  # (the client's folder, hidden: an empty tmpfs over it)
                worker = [
                    "unshare",
                    "-m",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    'mount -t tmpfs hidden "$0" && exec "$@"',
                    str(self.hidden),
                    *worker,
                ]
            proc = self._spawn(worker, home, HOME=str(home), TMPDIR=str(home / "tmp"))
            self.workers.append((proc, home))
        address: str = json.loads(self.file.read_text())["address"]
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(count, timeout=60)
        return address

    def _spawn(self, argv: list[str], cwd: Path, **env: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**self.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=open(cwd / "stderr.txt", "w"),  # noqa: SIM115 - the process keeps it
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


def _objects(bucket: str) -> dict[str, bytes]:
    """The objects of a bucket of the moto server running in this process, read from its own
    store (its GET takes some 10 ms an object)."""
    from moto.s3.models import s3_backends

    for account in s3_backends.values():
        for backend in account.values():
            if bucket in backend.buckets:
                keys = backend.buckets[bucket].keys
                return {name: keys[name].value for name in keys}
    raise AssertionError(f"no bucket {bucket}")


def _wait(predicate, what: str, timeout: float = 60):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_job_on_three_machines_without_a_shared_disk(env, tmp_path, tmp_path_factory, s3):
    pytest.importorskip("distributed")
    import s3fs

    fs = s3fs.S3FileSystem(key="test", secret="test", endpoint_url=s3["FSSPEC_S3_ENDPOINT_URL"])
    fs.mkdir("cluster-jobs")
    fs.mkdir("cluster-previews")
    base = env.server.url
    lines, expected = [], {}
    for i in range(ITEMS):
        if i % 100 == 7:  # 30 gone for good
            lines.append(f"{base}/gone/m{i}.bin")
        else:
            # (50 seeds: the server makes 1 MiB of pattern per seed; each size its own)
            lines.append(f"{base}/files/c{i}.bin?size={SIZE + i}&seed={i % 50}")
            expected[f"c{i}.bin"] = body_sha256(i % 50, SIZE + i)
        if i % 100 == 51:  # 30 answered 503 once
            env.fault(kind="status", status=503, path=f"/files/c{i}.bin", times=1)
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    before = {p for p in tmp_path.rglob("*")}
    machines = tmp_path_factory.mktemp("machines")
    worker_env = {k: v for k, v in env.env.items() if not k.startswith(("XDG_", "HALFTUNES_"))}
    cluster = Cluster(machines, tmp_path, {**worker_env, **s3, "PYTHONUNBUFFERED": "1"})
    try:
        address = cluster.start(3)
        env.server.state.throttle_bps = 40_000  # (slow until a shard is seen mid-way)
        job = env.spawn(
            "job",
            "run",
            "s3://cluster-jobs/x",
            "--input",
            str(tmp_path / "in.txt"),
            "-P",
            "s3://cluster-previews/set",
            "--engine",
            "dask",
            "--scheduler",
            address,
            "--shard-size",
            str(SHARD),
            "--json",
            "--progress",
            "none",
            env=s3,
        )

        def running_shard():
            """A worker mid-shard: some of its uploads noted in the job store already."""
            for proc, home in cluster.workers:
                for shard in home.glob(".local/state/halftunes/jobs/*/[0-9]*"):
                    note = f"cluster-jobs/x/uploads/{shard.name}.jsonl"
                    fs.invalidate_cache()
                    if fs.exists(note) and not fs.exists(
                        f"cluster-jobs/x/manifests/{shard.name}.jsonl"
                    ):
                        return proc, shard.name, fs.cat(note).decode()
            return None

        victim, _, note = _wait(running_shard, "a shard mid-way", timeout=120)
        victim.kill()  # the machine is gone: its scratch with it
        victim.wait(timeout=30)
        env.server.state.throttle_bps = None
        out, err = job.communicate(timeout=400)
        assert job.returncode == 1, err[-3000:]  # (the 404s)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
        cluster.stop()
    status = json.loads(out)
    assert status["items"] == ITEMS and status["shards_done"] == ITEMS // SHARD
    assert (status["completed"], status["failed"]) == (ITEMS - MISSING, MISSING)
    done = [
        json.loads(line)
        for path in sorted(fs.ls("cluster-jobs/x/manifests"))
        if path.endswith(".jsonl")
        for line in fs.cat(path).decode().splitlines()
    ]
    assert len(done) == ITEMS and len({m["id"] for m in done}) == ITEMS
    for m in done:
        name = m["url"].rsplit("/", 1)[1].split("?")[0]
        if "/gone/" in m["url"]:
            assert (m["status"], m["http_status"], m["permanent"]) == ("failed", 404, True), m
            continue
        assert m["status"] == "completed" and m["path"] == f"s3://cluster-previews/set/{name}", m
        assert m["sha256"] == expected[name]
    stored = _objects("cluster-previews")  # every object's bytes, as the S3 server holds them
    assert set(stored) == {f"set/{name}" for name in expected}
    for key, data in stored.items():
        assert hashlib.sha256(data).hexdigest() == expected[key.removeprefix("set/")], key
    gets = Counter(e["path"] for e in env.server.state.log if e["path"].startswith("/files/"))
    ok = Counter(
        e["path"]
        for e in env.server.state.log
        if e["path"].startswith("/files/") and e.get("status") in (200, 206)
    )
    for i in range(51, ITEMS, 100):  # each 503 answered once, then fetched whole
        assert gets[f"/files/c{i}.bin"] >= 2 and ok[f"/files/c{i}.bin"] >= 1
    # the killed machine's shard moved: what the store noted in the output is not fetched again
    noted = [json.loads(line)["path"].rsplit("/", 1)[1] for line in note.splitlines()]
    assert noted, "the note of the killed shard"
    for name in noted:
        assert ok[f"/files/{name}"] == 1, name
    refetched = [p for p, n in ok.items() if n > 1]
    assert len(refetched) <= SHARD, refetched  # at most one shard's work again
    # nothing of a worker's on the client's side: no shard records, no staging, no partial
    after = {p for p in tmp_path.rglob("*")} - before
    strays = [p for p in after if p.name.endswith(".part") or "staging" in p.parts]
    strays += [p for p in after if p.name == "downloads.db" and env.state_dir not in p.parents]
    assert not strays and not list(tmp_path.rglob("jobs/*/0*")), strays
    # ... and on the workers' own: their scratch under their state dirs
    scratches = [list(home.glob(".local/state/halftunes/jobs/*/0*")) for _, home in cluster.workers]
    assert sum(len(s) for s in scratches) >= ITEMS // SHARD
    assert all(os.path.commonpath([machines, p]) == str(machines) for s in scratches for p in s)
