"""Catalog-scale jobs (local engine): plan, shards, manifests, reruns, interruptions, bad input."""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import signal
from pathlib import Path

import pytest
from conftest import sha256_file

from halftunes_cli.errors import UsageError
from halftunes_cli.jobs.inputs import read_items

ALBUM = 1469577723


def manifests(job: Path) -> list[dict]:
    return [
        json.loads(line)
        for p in sorted((job / "manifests").glob("*.jsonl"))
        for line in p.read_text().splitlines()
    ]


def scratch_of(job: Path, root: Path | None = None) -> Path:
    """Where a job's shard records are on this machine: a folder per plan (by its id)."""
    plan_id = json.loads((job / "plan.json").read_text())["id"]
    return (root or job / "state") / plan_id


def test_a_mixed_job_and_a_rerun_that_sends_nothing(env, tmp_path):
    env.fault(path="/previews/1000005/", kind="status", status=404, times=-1)
    url = f"{env.server.url}/files/job.bin?size=50000&seed=4"
    lines = ["1000001", "1000002", url, "999", str(ALBUM), "1000005", "1000003"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    job, out = tmp_path / "job", tmp_path / "out"
    args = [
        "job",
        "run",
        str(job),
        "--input",
        str(tmp_path / "in.txt"),
        "-P",
        str(out),
        "--shard-size",
        "3",
        "--json",
    ]
    first = env.run(*args)
    assert first.returncode == 1, first.stderr  # some items failed
    status = json.loads(first.stdout)
    assert {k: status[k] for k in ("shards", "shards_done", "items", "completed", "failed")} == {
        "shards": 3,
        "shards_done": 3,
        "items": 7,
        "completed": 4,
        "failed": 3,
    }
    items = {m["id"]: m for m in manifests(job)}
    assert [m["line"] for m in manifests(job)] == list(range(1, 8))  # every line, in order
    for tid in (1000001, 1000002, 1000003):
        m = items[str(tid)]
        assert m["status"] == "completed" and m["sha256"] == env.expected_sha(tid)
        assert (
            sha256_file(m["path"]) == m["sha256"] and m["bytes"] == Path(m["path"]).stat().st_size
        )
        assert m["artist"] == "Jack Johnson" and m["kind"] == "song"
        # the transfer's metrics: its time to first byte, and its speed
        assert 0 < m["time_to_first_byte"] < 30 and m["bytes_per_second"] > 0
    assert items["999"]["time_to_first_byte"] is None  # (nothing was fetched)
    assert items["999"]["error"] == "no track with id 999"
    assert "is an album" in items[str(ALBUM)]["error"]
    assert items["1000005"]["status"] == "failed" and items["1000005"]["http_status"] == 404
    # the summary names every failed item (up to 10) and the command that lists them all
    for named in ("failed: 999  -  no track with id 999", f"failed: {ALBUM}  -  ", "HTTP 404"):
        assert named in first.stderr, first.stderr
    assert f"halftunes job status {job} --failed" in first.stderr
    failed = env.json("job", "status", str(job), "--failed")
    assert [(f["id"], f["http_status"], f["shard"]) for f in failed] == [
        ("999", None, 1),
        (str(ALBUM), None, 1),
        ("1000005", 404, 1),
    ]
    listed = env.run("job", "status", str(job), "--failed")
    assert listed.returncode == 0 and listed.stdout.splitlines()[2].startswith("1000005\tHTTP 404")
    requests_before = len(env.server.state.log)
    second = env.run(*args)
    assert second.returncode == 1 and json.loads(second.stdout)["completed"] == 4
    assert len(env.server.state.log) == requests_before  # a finished job sends nothing
    status = env.json("job", "status", str(job))
    assert status["shards_done"] == 3 and status["bytes"] == sum(m["bytes"] for m in manifests(job))


def test_an_interrupted_job_continues_where_it_stopped(env, tmp_path):
    ids = [str(t["trackId"]) for t in env.json("search", "jack johnson", "--limit", "6")]
    for tid in ids:
        env.track(int(tid), size=1_000_000)
    (tmp_path / "in.csv").write_text("trackId,note\n" + "".join(f"{i},x\n" for i in ids))
    job, out = tmp_path / "job", tmp_path / "out"
    args = [
        "job",
        "run",
        str(job),
        "--input",
        str(tmp_path / "in.csv"),
        "-P",
        str(out),
        "--shard-size",
        "2",
        "--workers",
        "2",
    ]
    env.server.state.throttle_bps = 1_000_000
    proc = env.spawn(*args)
    env.wait_for(
        lambda: (
            (job / "manifests" / "000000.jsonl").exists()
            and any(p.stat().st_size > 100_000 for p in out.glob("*.part"))
        ),
        what="one shard done and the next under way",
    )
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 130
    env.server.state.throttle_bps = None
    result = env.run(*args)
    assert result.returncode == 0, result.stderr
    done = manifests(job)
    assert [m["id"] for m in done] == ids and all(m["status"] == "completed" for m in done)
    for m in done:
        assert sha256_file(m["path"]) == env.expected_sha(int(m["id"]))
    served = sum(
        e["bytes_sent"] for e in env.server.state.log if e["path"].startswith("/previews/")
    )
    running = 4  # at most the transfers of the two shards that were running
    assert served <= 6 * 1_000_000 + running * (65536 + 1_000_000)  # overlap + one checkpoint


@pytest.mark.parametrize(
    "name, text, fragment",
    [
        ("in.csv", "title,artist\nx,y\n", "in.csv:1: no trackId, id or url column"),
        ("in.jsonl", '{"trackId": 1000001}\n{"trackId": \n', "in.jsonl:2: not a JSON object"),
        ("in.txt", "1000001\nnot-an-id\n", "in.txt:2: 'not-an-id' is neither"),
        ("in.tsv", "id\tx\n1000001\t1\n\t2\n", "in.tsv:3: no id or URL"),
    ],
)
def test_bad_input_names_the_line_and_downloads_nothing(env, tmp_path, name, text, fragment):
    (tmp_path / name).write_text(text)
    job = tmp_path / "job"
    result = env.run(
        "job", "run", str(job), "--input", str(tmp_path / name), "-P", str(tmp_path / "out")
    )
    assert result.returncode == 2 and fragment in result.stderr, result.stderr
    assert not (job / "plan.json").exists() and not (tmp_path / "out").exists()
    assert not env.server.state.requests_for("/previews/")


def test_a_missing_input_and_a_dir_that_is_no_job(env, tmp_path):
    result = env.run("job", "run", str(tmp_path / "job"), "--input", str(tmp_path / "nope.txt"))
    assert result.returncode == 2 and "does not exist" in result.stderr
    result = env.run("job", "status", str(tmp_path))
    assert result.returncode == 2 and "not a job dir" in result.stderr


def test_input_formats():
    import tempfile

    folder = Path(tempfile.mkdtemp())
    cases = {
        "a.txt": "# comment\n1000001\n\nhttps://x/y.m4a\n",
        "a.csv": "url,trackId\nhttps://x/y.m4a,1\n",
        "a.tsv": "trackId\n1000001\n",
        "a.jsonl": '{"id": "1000001"}\n{"url": "https://x/y.m4a"}\n',
    }
    got = {}
    for name, text in cases.items():
        (folder / name).write_text(text)
        got[name] = [(i.line, i.value) for i in read_items(folder / name)]
    assert got == {
        "a.txt": [(2, "1000001"), (4, "https://x/y.m4a")],
        "a.csv": [(2, "1")],
        "a.tsv": [(2, "1000001")],
        "a.jsonl": [(1, "1000001"), (2, "https://x/y.m4a")],
    }
    with pytest.raises(UsageError, match="not a readable Parquet file"):
        (folder / "a.parquet").write_bytes(b"PAR1")
        read_items(folder / "a.parquet")


# -- the Dask engine (a LocalCluster of 2 worker processes) -------------------------------------
def _big_input(env, tmp_path, n: int = 2000) -> Path:
    """Mixed ids and URLs; every 50th URL answers 404."""
    ids = [str(t["trackId"]) for t in env.server.state.tracks.values() if "previewUrl" in t]
    lines = []
    for i in range(n):
        if i % 10 == 0:
            lines.append(ids[(i // 10) % len(ids)] if i < 10 * len(ids) else ids[0])
        elif i % 50 == 1:
            lines.append(f"{env.server.url}/files/missing-{i}.bin?size=1000")
        else:
            lines.append(f"{env.server.url}/files/f{i}.bin?size={2000 + i}&seed={i}")
    path = tmp_path / "big.txt"
    path.write_text("\n".join(dict.fromkeys(lines)) + "\n")
    return path


def test_a_2000_item_job_on_dask(env, tmp_path):
    pytest.importorskip("distributed")
    from halftunes_cli.testing.catalog import body_sha256

    env.fault(path="/files/missing-", kind="status", status=404, times=-1)
    source = _big_input(env, tmp_path)
    job, out = tmp_path / "job", tmp_path / "out"
    args = [
        "job",
        "run",
        str(job),
        "--input",
        str(source),
        "-P",
        str(out),
        "--engine",
        "dask",
        "--shard-size",
        "250",
        "--json",
    ]
    first = env.run_process(*args, "--progress", "json", timeout=240)
    assert first.returncode == 1, first.stderr[-2000:]
    status = json.loads(first.stdout)
    items = len(source.read_text().splitlines())
    # every item was told as its shard ended it, through Dask's pub/sub: each once
    told = [json.loads(x)["id"] for x in first.stderr.splitlines() if x.startswith('{"event"')]
    assert len(told) == len(set(told)) == items
    assert status["items"] == items and status["shards_done"] == status["shards"]
    done = manifests(job)
    assert len(done) == items and len({m["id"] for m in done}) == items  # no duplicate
    failed = [m for m in done if m["status"] == "failed"]
    assert failed and all(m["http_status"] == 404 and "missing-" in m["url"] for m in failed)
    for m in done:
        if m["status"] != "completed":
            continue
        assert sha256_file(m["path"]) == m["sha256"]
        if "/files/f" in m["url"]:
            i = int(m["url"].split("/files/f")[1].split(".")[0])
            assert m["sha256"] == body_sha256(i, 2000 + i)
        else:
            assert m["sha256"] == env.expected_sha(int(m["id"]))
    before = len(env.server.state.log)
    second = env.run_process(*args, timeout=120)
    assert second.returncode == 1 and json.loads(second.stdout) == status
    assert len(env.server.state.log) == before  # nothing asked again, no cluster started


def test_a_dask_worker_killed_mid_job(env, tmp_path):
    pytest.importorskip("distributed")
    import os

    urls = [f"{env.server.url}/files/k{i}.bin?size=400000&seed={i}" for i in range(24)]
    (tmp_path / "in.txt").write_text("\n".join(urls) + "\n")
    job, out = tmp_path / "job", tmp_path / "out"
    env.server.state.throttle_bps = 400_000
    proc = env.spawn(
        "job",
        "run",
        str(job),
        "--input",
        str(tmp_path / "in.txt"),
        "-P",
        str(out),
        "--engine",
        "dask",
        "--shard-size",
        "4",
    )

    def a_shard_owner() -> int | None:
        for lock in (job / "state").glob("*/*/owners/*.lock"):
            if any(p.stat().st_size > 50_000 for p in out.glob("*.part")):
                return int(lock.name.split("-")[0])
        return None

    victim = env.wait_for(a_shard_owner, timeout=60, what="a worker downloading")
    os.kill(victim, signal.SIGKILL)  # the worker process running a shard dies
    env.server.state.throttle_bps = None
    _out_text, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]
    done = manifests(job)
    assert sorted(m["url"] for m in done) == sorted(urls)  # none missing, none twice
    from halftunes_cli.testing.catalog import body_sha256

    for m in done:
        i = int(m["url"].split("/files/k")[1].split(".")[0])
        assert m["status"] == "completed" and sha256_file(m["path"]) == body_sha256(i, 400_000)
    assert not list(out.glob("*.part"))


def test_output_to_s3_on_a_local_s3_server(env, tmp_path, s3):
    import hashlib

    import s3fs

    fs = s3fs.S3FileSystem(key="test", secret="test", endpoint_url=s3["FSSPEC_S3_ENDPOINT_URL"])
    fs.mkdir("previews")
    lines = ["1000001", "1000002", f"{env.server.url}/files/s3.bin?size=300000&seed=6"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    job = tmp_path / "job"
    result = env.run_process(
        *_job_args(job, tmp_path / "in.txt", "s3://previews/set1", "--json"), env=s3
    )
    assert result.returncode == 0, result.stderr[-2000:]
    done = manifests(job)
    assert [m["status"] for m in done] == ["completed"] * 3
    keys = sorted(fs.ls("previews/set1"))
    assert keys == sorted(m["path"].removeprefix("s3://") for m in done)
    for m in done:
        data = fs.cat(m["path"])
        assert len(data) == m["bytes"] and hashlib.sha256(data).hexdigest() == m["sha256"]
    assert done[0]["sha256"] == env.expected_sha(1000001)
    staging = scratch_of(job) / "staging"  # (this machine's: the job is a folder here)
    assert staging.is_dir() and not [p for p in staging.rglob("*") if p.is_file()]


def test_a_rate_limited_lookup_slows_the_job_down(env, monkeypatch):
    from halftunes_cli import Session, SessionConfiguration
    from halftunes_cli.itunes import ITunesClient
    from halftunes_cli.jobs import job as jobs

    env.fault(path="/lookup", kind="status", status=403, times=2)  # no Retry-After: not retried
    waits: list[float] = []
    session = Session(SessionConfiguration.ephemeral(api_url=env.server.url))
    tracks = jobs._lookup_patiently(ITunesClient(session), ["1000001"], sleep=waits.append)
    assert [t.trackId for t in tracks] == [1000001]
    assert waits == [15.0, 30.0]  # two refusals, two pauses, then the answer
    assert [e["status"] for e in env.server.state.requests_for("/lookup")] == [403, 403, 200]


def test_parquet_input_and_manifests(env, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    url = f"{env.server.url}/files/pq.bin?size=1000&seed=3"
    pq.write_table(
        pa.table({"trackId": ["1000001", "1000002"], "note": ["a", "b"]}), tmp_path / "in.parquet"
    )
    pq.write_table(pa.table({"url": [url]}), tmp_path / "urls.parquet")
    for name in ("in.parquet", "urls.parquet"):
        job = tmp_path / f"job-{name}"
        result = env.run(
            "job",
            "run",
            str(job),
            "--input",
            str(tmp_path / name),
            "-P",
            str(tmp_path / "out"),
            "--json",
        )
        assert result.returncode == 0, result.stderr
        table = pq.read_table(job / "manifests" / "000000.parquet").to_pylist()
        assert table == manifests(job)  # the same records as the JSON Lines manifest
    assert [
        m["id"]
        for m in pq.read_table(
            tmp_path / "job-in.parquet" / "manifests" / "000000.parquet"
        ).to_pylist()
    ] == ["1000001", "1000002"]
    pq.write_table(pa.table({"title": ["x"]}), tmp_path / "bad.parquet")
    bad = env.run("job", "run", str(tmp_path / "job-bad"), "--input", str(tmp_path / "bad.parquet"))
    assert bad.returncode == 2 and "no trackId, id or url column" in bad.stderr


def test_one_overall_bar_on_a_terminal(env, tmp_path):
    from conftest import run_in_pty, visible_lines

    urls = [f"{env.server.url}/files/b{i}.bin?size=20000&seed={i}" for i in range(6)]
    (tmp_path / "in.txt").write_text("\n".join(urls) + "\n")
    out = run_in_pty(
        env,
        [
            "job",
            "run",
            str(tmp_path / "job"),
            "--input",
            str(tmp_path / "in.txt"),
            "-P",
            str(tmp_path / "out"),
            "--shard-size",
            "2",
        ],
        100,
    )
    assert env.last_pty_code == 0, out
    screen = "\n".join(visible_lines(out, 100))
    assert "3/3 shards" in screen and "6 items" in screen and "files/s" in screen
    assert "0 failed" in screen


def test_one_name_twice_in_a_job_never_shares_a_file(env, tmp_path):
    # The explicit and the clean edition have the same name, and land in different shards.
    explicit, clean = "1500000000011", "1500000000012"
    (tmp_path / "in.txt").write_text(f"{explicit}\n{clean}\n")
    job = tmp_path / "job"
    result = env.run(
        "job",
        "run",
        str(job),
        "--input",
        str(tmp_path / "in.txt"),
        "-P",
        str(tmp_path / "out"),
        "--shard-size",
        "1",
    )
    assert result.returncode == 0, result.stderr
    # decided in the plan, before shards run side by side on a cluster
    planned = json.loads((job / "shards" / "000001.json").read_text())[0]["name"]
    assert planned == f"The Shapes - Loud Shapes ({clean}).m4a"
    paths = {m["id"]: Path(m["path"]).name for m in manifests(job)}
    assert paths == {
        explicit: "The Shapes - Loud Shapes.m4a",
        clean: f"The Shapes - Loud Shapes ({clean}).m4a",
    }
    for m in manifests(job):
        assert sha256_file(m["path"]) == env.expected_sha(int(m["id"]))


def four_one_item_shards(env, tmp_path, size: int, workers: int) -> tuple[list[str], Path, list]:
    """Four shards of one preview of `size` bytes each; the ids, the job dir, the command."""
    ids = [str(t["trackId"]) for t in env.json("search", "jack johnson", "--limit", "4")]
    for tid in ids:
        env.track(int(tid), size=size)
    (tmp_path / "in.txt").write_text("\n".join(ids) + "\n")
    job = tmp_path / "job"
    args = ["job", "run", str(job), "--input", str(tmp_path / "in.txt")]
    args += ["-P", str(tmp_path / "out"), "--shard-size", "1", "--workers", str(workers)]
    return ids, job, args


@pytest.mark.parametrize("workers", [1, 2])
def test_the_local_engine_runs_shards_in_parallel_processes(env, tmp_path, workers):
    # four shards of one slow item each (2 s): one worker starts them 2 s apart, two
    # workers two at a time
    ids, job, args = four_one_item_shards(env, tmp_path, 800_000, workers)
    env.server.state.throttle_bps = 400_000
    result = env.run_process(*args)
    assert result.returncode == 0, result.stderr
    done = manifests(job)
    assert sorted(m["id"] for m in done) == sorted(ids)
    assert all(sha256_file(m["path"]) == env.expected_sha(int(m["id"])) for m in done)
    starts = sorted(e["time"] for e in env.server.state.log if e["path"].startswith("/previews/"))
    assert len(starts) == 4
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    if workers == 1:
        assert min(gaps) >= 1.8, gaps  # one after the other
    else:
        assert gaps[0] < 1.0 and gaps[2] < 1.0, gaps  # two at a time ...
        assert starts[2] - starts[0] >= 1.8, gaps  # ... and no more


def test_a_killed_job_leaves_no_worker_behind_and_a_rerun_finishes(env, tmp_path):
    import os

    ids, job, args = four_one_item_shards(env, tmp_path, 2_000_000, 2)
    out = tmp_path / "out"
    env.server.state.throttle_bps = 500_000
    proc = env.spawn(*args)
    env.wait_for(
        lambda: len([p for p in out.glob("*.part") if p.stat().st_size > 100_000]) == 2,
        what="two shards under way",
    )
    children = [
        int(pid)
        for pid in (Path("/proc") / str(proc.pid) / "task" / str(proc.pid) / "children")
        .read_text()
        .split()
    ]
    assert len(children) >= 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    def gone(pid: int) -> bool:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # (we are the subreaper: reap what we can)
        try:
            state = (Path("/proc") / str(pid) / "stat").read_text().split(") ")[1][0]
        except OSError:
            return True
        return state == "Z"

    env.wait_for(lambda: all(gone(pid) for pid in children), what="the workers to die with it")
    env.server.state.throttle_bps = None
    result = env.run(*args)
    assert result.returncode == 0, result.stderr
    done = manifests(job)
    assert sorted(m["id"] for m in done) == sorted(ids)
    assert all(sha256_file(m["path"]) == env.expected_sha(int(m["id"])) for m in done)


def _job_args(job: Path | str, input_file: Path, out: Path | str, *extra: str) -> list[str]:
    return ["job", "run", str(job), "--input", str(input_file), "-P", str(out), *extra]


def test_a_rerun_with_added_ids_fetches_only_those_and_keeps_the_rest(env, tmp_path):
    ids = [str(t["trackId"]) for t in env.json("search", "jack johnson", "--limit", "5")]
    first_ids, added = ids[:3], ids[3:]
    job, out, listing = tmp_path / "job", tmp_path / "out", tmp_path / "in.txt"
    listing.write_text("\n".join(first_ids) + "\n")
    first = env.run(*_job_args(job, listing, out, "--shard-size", "2"))
    assert first.returncode == 0, first.stderr
    assert sorted(m["id"] for m in manifests(job)) == sorted(first_ids)
    # the input grows by two ids and loses one: only the two are fetched
    listing.write_text("\n".join(first_ids[1:] + added) + "\n")
    with env.server.state.lock:
        env.server.state.log.clear()
    again = env.run(*_job_args(job, listing, out))
    assert again.returncode == 0, again.stderr
    assert "2 new item(s) of the input planned into 1 new shard(s)" in again.stderr
    assert "1 item(s) of the job are no longer in the input" in again.stderr
    fetched = sorted(
        e["path"].split("/")[2] for e in env.server.state.log if e["path"].startswith("/previews/")
    )
    assert fetched == sorted(added)
    lookups = [e for e in env.server.state.log if e["path"] == "/lookup"]
    assert len(lookups) == 1 and set(
        lookups[0]["raw_path"].split("id=")[1].split("&")[0].split(",")
    ) == set(added)
    done = {m["id"]: m for m in manifests(job)}
    assert sorted(done) == sorted(ids) and all(m["status"] == "completed" for m in done.values())
    assert all(sha256_file(m["path"]) == env.expected_sha(int(m["id"])) for m in done.values())
    status = env.json("job", "status", str(job))
    assert status["shards"] == 3 and status["items"] == 5 and status["completed"] == 5


def test_a_rerun_with_another_output_or_shard_size_is_refused(env, tmp_path):
    job, out, listing = tmp_path / "job", tmp_path / "out", tmp_path / "in.txt"
    listing.write_text("1000001\n")
    assert env.run(*_job_args(job, listing, out, "--shard-size", "2")).returncode == 0
    before = len(env.server.state.log)
    other = env.run(*_job_args(job, listing, tmp_path / "elsewhere"))
    assert other.returncode == 2 and f"-P {tmp_path / 'elsewhere'}" in other.stderr
    assert f"the job's: {out}" in other.stderr and "Traceback" not in other.stderr
    size = env.run(*_job_args(job, listing, out, "--shard-size", "3"))
    assert size.returncode == 2 and "--shard-size 3 (the job's: 2)" in size.stderr
    assert len(env.server.state.log) == before  # nothing was asked of the server
    assert not (tmp_path / "elsewhere").exists()


def test_transient_failures_are_retried_by_every_rerun_permanent_ones_on_request(env, tmp_path):
    ids = [str(t["trackId"]) for t in env.json("search", "jack johnson", "--limit", "3")]
    flaky, gone, fine = ids
    job, out, listing = tmp_path / "job", tmp_path / "out", tmp_path / "in.txt"
    listing.write_text("\n".join(ids) + "\n")
    env.fault(path=f"/previews/{flaky}/", kind="status", status=503, times=-1)
    env.fault(path=f"/previews/{gone}/", kind="status", status=404, times=-1)
    no_retries = {"HALFTUNES_RETRIES": "0"}
    first = env.run(*_job_args(job, listing, out), env=no_retries)
    assert first.returncode == 1
    lines = {m["id"]: m for m in manifests(job)}
    assert (lines[flaky]["http_status"], lines[flaky]["permanent"]) == (503, False)
    assert (lines[gone]["http_status"], lines[gone]["permanent"]) == (404, True)
    assert lines[fine]["status"] == "completed"
    with env.server.state.lock:
        env.server.state.faults.clear()
        env.server.state.log.clear()
    # a rerun tries the 503 again (and only it); the 404 stays as it was
    second = env.run(*_job_args(job, listing, out))
    assert second.returncode == 1, second.stderr
    asked = [e["path"] for e in env.server.state.log if e["path"].startswith("/previews/")]
    assert asked == [f"/previews/{flaky}/preview.m4a"]
    lines = {m["id"]: m for m in manifests(job)}
    assert lines[flaky]["status"] == "completed"
    assert sha256_file(lines[flaky]["path"]) == env.expected_sha(int(flaky))
    assert lines[gone]["status"] == "failed" and lines[fine]["status"] == "completed"
    assert [m["id"] for m in manifests(job)] == ids  # every line kept, in its place
    # --retry-failed tries the permanent one too
    third = env.run(*_job_args(job, listing, out, "--retry-failed"))
    assert third.returncode == 0, third.stderr
    lines = {m["id"]: m for m in manifests(job)}
    assert all(m["status"] == "completed" for m in lines.values())
    assert sha256_file(lines[gone]["path"]) == env.expected_sha(int(gone))


def test_the_overall_bar_moves_per_item_from_the_first_seconds(env, tmp_path):
    # 200 items served slowly (a quarter of a second each): the bar is there at once and
    # moves with the first items ended, long before the first shard (100 items, at least 4 s
    # on its connections) ends. (Told by what the screen shows together, not by a clock: a
    # machine under load starts the worker processes late.)
    from conftest import Terminal

    urls = [f"{env.server.url}/files/s{i}.bin?size=10000&seed={i % 50}" for i in range(200)]
    (tmp_path / "in.txt").write_text("\n".join(urls) + "\n")
    env.server.state.throttle_bps = 40_000
    args = _job_args(tmp_path / "job", tmp_path / "in.txt", tmp_path / "out")
    terminal = Terminal(env, [*args, "--shard-size", "100"], columns=120)
    terminal.wait_for_text("/200 items", timeout=30)

    def moved() -> tuple[int, int] | None:
        screen = "\n".join(terminal.screen())
        counts = re.findall(r"(\d+)/200 items", screen)
        shards = re.findall(r"(\d+)/2 shards", screen)
        if counts and shards and int(counts[-1]) > 0:
            return int(counts[-1]), int(shards[-1])
        return None

    items, shards = env.wait_for(moved, timeout=30, interval=0.05, what="the bar to move")
    assert shards == 0 and items < 100, (items, shards)  # moved by items, not by a shard
    assert terminal.wait(timeout=120) == 0
    screen = "\n".join(terminal.screen())
    assert "200/200 items" in screen and "2/2 shards" in screen and "0 failed" in screen


def test_progress_json_tells_every_item_once(env, tmp_path):
    env.fault(path="/previews/1000005/", kind="status", status=404, times=-1)
    url = f"{env.server.url}/files/job.bin?size=50000&seed=4"
    lines = ["1000001", "1000002", url, "999", str(ALBUM), "1000005", "1000003"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    args = _job_args(tmp_path / "job", tmp_path / "in.txt", tmp_path / "out")
    result = env.run_process(*args, "--shard-size", "3", "--progress", "json")
    assert result.returncode == 1, result.stderr
    events = [json.loads(x) for x in result.stderr.splitlines() if x.startswith("{")]
    ids = [e["id"] for e in events]
    expected = sorted(m["id"] for m in manifests(tmp_path / "job"))
    assert sorted(ids) == expected and len(expected) == 7  # every item, each once
    by_id = {e["id"]: e for e in events}
    done = by_id["1000001"]
    assert done["event"] == "completed" and done["bytes"] > 0 and Path(done["path"]).exists()
    assert by_id["1000005"]["event"] == "failed" and by_id["1000005"]["http_status"] == 404
    assert by_id["999"]["error"] == "no track with id 999"


def test_off_a_terminal_the_job_says_a_line_every_ten_seconds():
    from halftunes_cli.render import Console, JobProgress

    now = [0.0]
    said: list[str] = []
    progress = JobProgress(Console(), "auto", False, clock=lambda: now[0])
    progress._stream.write = lambda text: said.append(text) or len(text)  # type: ignore[method-assign]
    progress.start(30, 3)
    for second in range(30):
        now[0] = float(second)
        progress.item({"id": str(second), "status": "completed", "bytes": 1000})
    progress.close()
    assert [line.split(" · ")[0] for line in said] == [
        "11 of 30 items",
        "21 of 30 items",
        "30 of 30 items",
    ]


def _children(pid: int) -> list[int]:
    try:
        text = (Path("/proc") / str(pid) / "task" / str(pid) / "children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _gone(pid: int) -> bool:
    """Dead (reaped here, where we can: the tests are the subreaper) or a zombie."""
    import os

    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().split(") ")[1][0] == "Z"
    except OSError:
        return True


def test_a_job_killed_while_its_workers_start_leaves_none_behind(env, tmp_path):
    # killed before its workers could ask to die with it: they see it gone and end
    _, _, args = four_one_item_shards(env, tmp_path, 2_000_000, 2)
    env.server.state.throttle_bps = 200_000
    proc = env.spawn(*args)
    children = env.wait_for(lambda: len(_children(proc.pid)) >= 2 and _children(proc.pid))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    env.wait_for(lambda: all(_gone(pid) for pid in children), what="the workers to end")


def test_a_worker_that_dies_ends_the_run_with_a_clear_error(env, tmp_path):
    ids, job, args = four_one_item_shards(env, tmp_path, 2_000_000, 2)
    env.server.state.throttle_bps = 500_000
    proc = env.spawn(*args)
    env.wait_for(
        lambda: len([p for p in (tmp_path / "out").glob("*.part") if p.stat().st_size > 0]) == 2,
        what="two shards under way",
    )
    import os

    workers = [
        pid
        for pid in _children(proc.pid)
        if b"spawn_main" in (Path("/proc") / str(pid) / "cmdline").read_bytes()
    ]
    os.kill(workers[0], signal.SIGKILL)  # (not the resource tracker: a shard worker)
    _, err = proc.communicate(timeout=60)  # (it used to wait forever)
    assert proc.returncode == 1 and "its worker process died" in err, err
    env.server.state.throttle_bps = None
    again = env.run(*args)
    assert again.returncode == 0, again.stderr
    assert sorted(m["id"] for m in manifests(job)) == sorted(ids)


def test_a_second_run_of_the_same_job_at_once_is_refused(env, tmp_path):
    _, job, args = four_one_item_shards(env, tmp_path, 2_000_000, 1)
    env.server.state.throttle_bps = 500_000
    proc = env.spawn(*args)
    env.wait_for(lambda: any((tmp_path / "out").glob("*.part")), what="the first run under way")
    second = env.run(*args)
    assert second.returncode == 1 and "another `halftunes job run` is running" in second.stderr
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated: the same command continues" in err, err
    row = next(iter(scratch_of(job).glob("*/downloads.db")))
    import sqlite3

    db = sqlite3.connect(row)
    statuses = {s for (s,) in db.execute("SELECT status FROM downloads")}
    db.close()
    assert statuses <= {"paused", "completed"}, statuses  # paused at a checkpoint, not lost


def test_an_item_named_twice_is_planned_once(env, tmp_path):
    url = f"{env.server.url}/files/twice.bin?size=30000&seed=3"
    (tmp_path / "in.txt").write_text(f"1000001\n{url}\n1000002\n1000001\n{url}\n")
    args = _job_args(tmp_path / "job", tmp_path / "in.txt", tmp_path / "out", "--shard-size", "2")
    result = env.run(*args)
    assert result.returncode == 0, result.stderr
    done = manifests(tmp_path / "job")
    assert len(done) == 3 and len({m["id"] for m in done}) == 3
    assert len(list((tmp_path / "out").iterdir())) == 3


def test_options_of_the_other_engine_are_refused_and_no_failures_is_said(env, tmp_path):
    (tmp_path / "in.txt").write_text("1000001\n")
    base = _job_args(tmp_path / "job", tmp_path / "in.txt", tmp_path / "out")
    dask = env.run(*base, "--engine", "dask", "--workers", "2")
    assert dask.returncode == 2 and "--workers is for the local engine" in dask.stderr
    local = env.run(*base, "--scheduler", "tcp://127.0.0.1:1")
    assert local.returncode == 2 and "--scheduler is for --engine dask" in local.stderr
    assert env.run(*base).returncode == 0
    quiet = env.run("job", "status", str(tmp_path / "job"), "--failed")
    assert quiet.returncode == 0 and quiet.stdout == "" and "no failed items" in quiet.stderr


def test_a_job_lock_that_is_a_folder_is_one_line(env, tmp_path):
    (tmp_path / "job" / "job.lock").mkdir(parents=True)
    (tmp_path / "in.txt").write_text("1000001\n")
    result = env.run(*_job_args(tmp_path / "job", tmp_path / "in.txt", tmp_path / "out"))
    assert result.returncode == 1, result.stderr
    assert f"cannot use {tmp_path / 'job' / 'job.lock'}: Is a directory" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_a_job_at_a_url_keeps_its_shard_records_in_the_machines_scratch(env, tmp_path):
    # file:// names a folder every worker sees (a shared disk): the plan and the manifests
    # are there, and each shard's records and partials in the worker machine's own state dir
    _, _, args = four_one_item_shards(env, tmp_path, 50_000, 2)
    url = f"file://{tmp_path / 'shared' / 'job'}"
    args[2] = url
    result = env.run_process(*args, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["completed"] == 4
    assert len(manifests(tmp_path / "shared" / "job")) == 4
    assert not (tmp_path / "shared" / "job" / "state").exists()
    assert not list((tmp_path / "shared" / "job").rglob("downloads.db"))
    assert len(list(env.state_dir.glob("jobs/*/00000[0-3]/downloads.db"))) == 4
    status = env.run("job", "status", url, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["shards_done"] == 4
    # --scratch: where the operator says
    (tmp_path / "more.txt").write_text("1000001\n")
    scratch = tmp_path / "scratch"
    more = [f"{url}2", tmp_path / "more.txt", tmp_path / "out", "--scratch", str(scratch)]
    other = env.run_process(*_job_args(*more))
    assert other.returncode == 0, other.stderr
    assert (scratch_of(tmp_path / "shared" / "job2", scratch) / "000000" / "downloads.db").exists()


def test_a_folder_of_this_machine_with_a_remote_scheduler_is_refused(env, tmp_path):
    (tmp_path / "in.txt").write_text("1000001\n")
    job, out = tmp_path / "job", tmp_path / "out"
    remote = ["--engine", "dask", "--scheduler", "tcp://10.0.0.5:8786"]
    result = env.run(*_job_args(job, tmp_path / "in.txt", out, *remote))
    assert result.returncode == 2, result.stderr
    assert f"the job dir {job} and the output folder {out} (-P)" in result.stderr
    assert "s3://bucket/jobs/x" in result.stderr and not job.exists()
    # a job at a URL, files to a folder here: the folder is what the workers cannot reach
    shared = env.run(*_job_args(f"file://{job}", tmp_path / "in.txt", out, *remote))
    assert shared.returncode == 2 and "cannot reach the output folder" in shared.stderr
    assert not job.exists()


def test_a_shard_that_moves_fetches_only_what_its_note_does_not_show_in_the_output(env, tmp_path):
    # The output at a URL (file:// here, as S3): a shard run again on a machine without its
    # records trusts the job store's upload note only for objects there with the noted size.
    urls = [f"{env.server.url}/files/mv{i}.bin?size={20_000 + i}&seed={i}" for i in range(4)]
    (tmp_path / "in.txt").write_text("\n".join(urls) + "\n")
    job, out = tmp_path / "job", tmp_path / "out"
    args = _job_args(job, tmp_path / "in.txt", f"file://{out}", "--workers", "1")
    first = env.run(*args)
    assert first.returncode == 0, first.stderr
    done = manifests(job)
    # the shard "moved": no manifest, no records here; the note it left says all four
    note = "".join(
        json.dumps({"id": m["id"], "path": m["path"], "bytes": m["bytes"], "sha256": m["sha256"]})
        + "\n"
        for m in done
    )
    assert not list((job / "uploads").iterdir())  # (removed with the manifest)
    (job / "uploads" / "000000.jsonl").write_text(note)
    (job / "manifests" / "000000.jsonl").unlink()
    import shutil

    shutil.rmtree(job / "state")
    (out / "mv1.bin").unlink()  # gone from the output
    (out / "mv2.bin").write_bytes(b"short")  # not the noted size
    with env.server.state.lock:
        env.server.state.log.clear()
    again = env.run(*args)
    assert again.returncode == 0, again.stderr
    fetched = sorted(e["path"] for e in env.server.state.log if e["path"].startswith("/files/"))
    assert fetched == ["/files/mv1.bin", "/files/mv2.bin"]
    from halftunes_cli.testing.catalog import body_sha256

    for i, m in enumerate(sorted(manifests(job), key=lambda m: m["url"])):
        assert m["status"] == "completed" and m["path"] == f"file://{out}/mv{i}.bin"
        assert sha256_file(out / f"mv{i}.bin") == body_sha256(i, 20_000 + i) == m["sha256"]
    assert not (job / "uploads" / "000000.jsonl").exists()  # the manifest says it all now


def test_a_job_begun_again_where_one_was_deleted_fetches_everything_again(env, tmp_path):
    # The job at a URL, its records on this machine: deleting the job (and its output) and
    # running the same command makes a new job; nothing of the old one's passes for it. And a
    # rerun on the same machine trusts its own upload notes only for objects still there.
    urls = [f"{env.server.url}/files/ag{i}.bin?size={30_000 + i}&seed={i}" for i in range(3)]
    (tmp_path / "in.txt").write_text("\n".join(urls) + "\n")
    job, out = tmp_path / "job", tmp_path / "out"
    args = _job_args(f"file://{job}", tmp_path / "in.txt", f"file://{out}", "--workers", "1")
    from halftunes_cli.testing.catalog import body_sha256

    def fetched() -> list[str]:
        paths = [e["path"] for e in env.server.state.log if e["path"].startswith("/files/")]
        with env.server.state.lock:
            env.server.state.log.clear()
        return sorted(paths)

    def all_there() -> None:
        for i in range(3):
            assert sha256_file(out / f"ag{i}.bin") == body_sha256(i, 30_000 + i)

    assert env.run(*args).returncode == 0
    assert len(fetched()) == 3
    import shutil

    shutil.rmtree(job)
    shutil.rmtree(out)
    again = env.run(*args)
    assert again.returncode == 0, again.stderr
    assert fetched() == [f"/files/ag{i}.bin" for i in range(3)]
    all_there()
    # the same job, its shard to run again here: one object deleted, one cut short
    (job / "manifests" / "000000.jsonl").unlink()
    (out / "ag0.bin").unlink()
    (out / "ag1.bin").write_bytes(b"short")
    third = env.run(*args)
    assert third.returncode == 0, third.stderr
    assert fetched() == ["/files/ag0.bin", "/files/ag1.bin"]
    all_there()


def test_one_job_has_one_name_whatever_the_url_says():
    pytest.importorskip("s3fs")
    from halftunes_cli.jobs.store import JobStore

    names = {JobStore.at(u).location for u in ("s3://b/x", "s3://b//x/", "s3a://b/x")}
    assert names == {"s3://b/x"}
    assert JobStore.at("file://localhost/tmp/j").location == "file:///tmp/j"
    for bad in ("file://relative/x", "file://host/x"):
        with pytest.raises(UsageError, match="not a folder of this machine"):
            JobStore.at(bad)
    for bad in ("s3://b/./x", "s3://b/x/../y", "s3://b/x[1]", "s3://b/j*"):
        with pytest.raises(UsageError, match="names its folder plainly"):
            JobStore.at(bad)


def test_a_damaged_or_unreachable_store_is_one_line_naming_the_file(env, tmp_path):
    import fsspec

    memory = fsspec.filesystem("memory")
    memory.pipe_file(
        "/jobs/d/plan.json", json.dumps({"shards": 2, "items": 2, "output": "x"}).encode()
    )
    memory.pipe_file("/jobs/d/manifests/000000.jsonl", b'{"id": "1", "status": "comp')
    result = env.run("job", "status", "memory://jobs/d")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "memory://jobs/d/manifests/000000.jsonl is damaged" in result.stderr
    memory.pipe_file("/jobs/d/manifests/000000.jsonl", b"")
    memory.pipe_file("/jobs/d/manifests/000001.jsonl", b"\xff\xfe not text")
    result = env.run("job", "status", "memory://jobs/d")
    assert result.returncode == 1, result.stderr
    assert "cannot read memory://jobs/d/manifests/000001.jsonl" in result.stderr
    # a job folder that cannot hold its shard files
    (tmp_path / "in.txt").write_text("1000001\n")
    (tmp_path / "blocked").mkdir()
    (tmp_path / "blocked" / "shards").write_text("a file where a folder goes")
    blocked = env.run(*_job_args(tmp_path / "blocked", tmp_path / "in.txt", tmp_path / "out"))
    assert blocked.returncode == 1 and "Traceback" not in blocked.stderr
    assert f"cannot write {tmp_path / 'blocked' / 'shards' / '000000.json'}" in blocked.stderr
    # an S3 endpoint nobody answers: the store's error, not a bug report
    pytest.importorskip("s3fs")
    nobody = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_MAX_ATTEMPTS": "1"}
    nobody["FSSPEC_S3_ENDPOINT_URL"] = "http://127.0.0.1:9"
    down = env.run_process(
        *_job_args("s3://bucket/j", tmp_path / "in.txt", tmp_path / "out"), env=nobody
    )
    assert down.returncode == 1 and "cannot read s3://bucket/j/plan.json" in down.stderr
    assert "internal error" not in down.stderr and "Traceback" not in down.stderr


def test_a_scheduler_that_is_not_there_is_said_before_planning(env, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # (closed again: nobody listens there)
    (tmp_path / "in.txt").write_text("1000001\n")
    args = _job_args(tmp_path / "job", tmp_path / "in.txt", tmp_path / "out")
    result = env.run(*args, "--engine", "dask", "--scheduler", f"tcp://127.0.0.1:{port}")
    assert result.returncode == 1, result.stderr
    assert f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}" in result.stderr
    assert not (tmp_path / "job" / "plan.json").exists()
    # something else listens there (an HTTP server: the catalog): said before planning too
    pytest.importorskip("distributed")
    http = env.server.url.replace("http://", "tcp://")
    other = env.run(*args, "--engine", "dask", "--scheduler", http)
    assert other.returncode == 1, other.stderr
    assert f"{http} answers, but not as a Dask scheduler" in other.stderr
    assert not (tmp_path / "job" / "plan.json").exists()


def test_two_runs_of_one_shard_on_one_machine_take_turns(env, tmp_path):
    # A Dask rerun right after its client was killed: the killed run's shard still runs in
    # the worker when the rerun's copy starts. The second waits for the first, then finds
    # its manifest: no item "ended running" in a manifest, every file whole.
    import threading

    from halftunes_cli.config import load_configuration
    from halftunes_cli.jobs.job import Job
    from halftunes_cli.testing.catalog import body_sha256

    urls = [f"{env.server.url}/files/tt{i}.bin?size=40000&seed={i}" for i in range(6)]
    (tmp_path / "in.txt").write_text("\n".join(urls) + "\n")
    job = Job(str(tmp_path / "job"))
    config = load_configuration({"state_dir": str(env.state_dir)})
    job.make_plan(tmp_path / "in.txt", str(tmp_path / "out"), 10, config)
    env.server.state.throttle_bps = 200_000  # (a fifth of a second a file)
    counts: list[dict] = []
    runs = [threading.Thread(target=lambda: counts.append(job.run_shard(0))) for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=60)
    assert sorted(map(str, counts)) == sorted(
        [str({"completed": 6, "failed": 0, "skipped": 0, "bytes": 240_000}), "{'skipped_shard': 1}"]
    ), counts
    lines = manifests(tmp_path / "job")
    assert [m["status"] for m in lines] == ["completed"] * 6
    for i, m in enumerate(lines):
        assert sha256_file(m["path"]) == body_sha256(i, 40_000)
