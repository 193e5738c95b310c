"""Fault injection: seeded rounds of transfer + fault + resume, and a concurrency storm.

`make test` runs a short variant; `make chaos` runs 200+ rounds and a one-minute storm:
    pytest tests/test_chaos.py --chaos-rounds=200 --storm-seconds=60 -s
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import HALFTUNES, Env, reap_children, sha256_file

from halftunes_cli.liveness import is_lock_held
from halftunes_cli.ranges import OVERLAP_BYTES

FAULTS = ["kill9", "sigterm", "sigint", "drop", "503", "stall", "etag", "ignore_range", "short"]
THROTTLE = 3_000_000  # bytes/s per request: a round's transfer lasts about half a second
CHECKPOINT_BYTES = THROTTLE  # one checkpoint interval (1 s) of data
DURABILITY = ["power-cut", "crash"]


def _wait_worker_gone(env: Env) -> None:
    pid = env.worker_pid()
    if pid is not None:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    env.wait_for(lambda: not is_lock_held(env.state_dir / "worker.lock"), timeout=20)


class Round:
    def __init__(self, env: Env, seed: int, kind: str, tid: int):
        self.env = env
        self.rng = random.Random(seed)
        self.kind = kind
        self.tid = tid
        self.rid = str(tid)
        self.mode = self.rng.choice(["fg", "bg"])
        self.size = self.rng.randint(1_000_000, 2_000_000)
        self.discarded = 0  # bytes a correct client must fetch again (restarts)
        self.resumes: list[tuple[float, int]] = []  # (when, bytes in the partial)
        self.began = time.time()

    def run(self) -> dict:
        env, st = self.env, self.env.server.state
        st.sizes[self.tid] = self.size
        prefix = f"/previews/{self.tid}/"
        at = self.rng.randint(self.size // 10, self.size * 8 // 10)
        extra_env = {"HALFTUNES_REQUEST_TIMEOUT": "1"}
        if self.kind == "drop":
            env.fault(path=prefix, kind="drop", after=at)
        elif self.kind == "503":
            env.fault(path=prefix, kind="drop", after=at)
            env.fault(path=prefix, kind="status", status=503, retry_after=self.rng.choice([0, 1]))
        elif self.kind == "stall":
            env.fault(path=prefix, kind="stall", after=at, seconds=2)
        elif self.kind == "short":
            env.fault(path=prefix, kind="short", extra=self.rng.randint(1, 100_000))
        proc = None
        if self.mode == "fg":
            proc = env.spawn("download", self.rid, env=extra_env)
        else:
            r = env.run("download", "-b", self.rid, env=extra_env)
            assert r.returncode == 0, r.stderr
        if self.kind in ("kill9", "sigterm", "sigint", "etag", "ignore_range"):
            done = (lambda: proc.poll() is not None) if proc else (lambda: False)
            env.wait_for(lambda: env.part_size(self.rid) >= at or done()
                         or (env.state_record(self.rid) or {}).get("status") == "completed",
                         timeout=30)  # fmt: skip
            self.interrupt(proc)
        if proc is not None:
            proc.communicate(timeout=60)
        for _attempt in range(6):
            row = env.state_record(self.rid)
            if row is not None and row["status"] == "completed":
                break
            self.resumes.append((time.time(), env.part_size(self.rid)))
            if self.mode == "fg":
                env.run("resume", self.rid, env=extra_env, timeout=120)
            else:
                env.run("resume", "-b", self.rid, env=extra_env)
                env.run("wait", self.rid, "--timeout", "60", timeout=120)
        return self.check()

    def interrupt(self, proc) -> None:
        env = self.env
        if self.kind in ("etag", "ignore_range"):
            r = env.run("pause", self.rid)
            assert r.returncode == 0, r.stderr
            row = env.state_record(self.rid)
            if row["status"] == "completed":
                return
            self.discarded = row["bytes_received"]
            if self.kind == "etag":
                st = env.server.state
                st.versions[self.tid] = st.versions.get(self.tid, 1) + 1
            else:
                env.fault(path=f"/previews/{self.tid}/", kind="ignore_range")
            return
        sig = {"kill9": signal.SIGKILL, "sigterm": signal.SIGTERM, "sigint": signal.SIGINT}[
            self.kind
        ]
        if proc is not None:
            proc.send_signal(sig)
            proc.communicate(timeout=30)
        else:
            pid = env.worker_pid()
            if pid is not None and is_lock_held(env.state_dir / "worker.lock"):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
                _wait_worker_gone(env)

    def check(self) -> dict:
        env = self.env
        row = env.state_record(self.rid)
        failures = []
        if row is None:
            failures.append("record lost")
        elif row["status"] != "completed":
            failures.append(f"status {row['status']}: {row['error']}")
        elif sha256_file(row["path"]) != env.expected_sha(self.tid):
            failures.append("CORRUPT FILE")
        stray = [p.name for p in env.download_dir.glob("*.part")]
        if stray:
            failures.append(f"stray partials {stray}")
        served = sum(e["bytes_sent"] for e in env.preview_requests(self.tid)
                     if e["time"] >= self.began)  # fmt: skip
        ranged = [e for e in env.preview_requests(self.tid)
                  if e["time"] >= self.began and e["range"]]  # fmt: skip
        over = served - self.size - self.discarded
        if over > CHECKPOINT_BYTES + OVERLAP_BYTES * len(ranged):
            failures.append(f"re-fetched {over} bytes over the minimum")
        for when, had in self.resumes:  # every resume compares the overlap before appending
            first = next((e for e in env.preview_requests(self.tid) if e["time"] >= when), None)
            if had > 0 and first is not None and first["range"] != env.resume_range(had):
                failures.append(f"resume with {had} bytes asked {first['range']}")
        return {"kind": self.kind, "mode": self.mode, "over": over, "failures": failures}


@pytest.mark.timeout(1800)
def test_chaos_rounds(request, tmp_path, server):
    rounds = request.config.getoption("--chaos-rounds")
    server.state.throttle_bps = THROTTLE
    tracks = [t for t, v in sorted(server.state.tracks.items()) if "previewUrl" in v]
    results = []
    started = time.monotonic()
    for i in range(rounds):
        root = tmp_path / f"round-{i}"
        root.mkdir()
        env = Env(root, server)
        kind = FAULTS[i % len(FAULTS)]
        # every fault in both durability modes: power-cut (fsync, group commit) and crash
        durability = DURABILITY[(i // len(FAULTS)) % len(DURABILITY)]
        env.env["HALFTUNES_DURABILITY"] = durability
        try:
            result = Round(env, seed=1000 + i, kind=kind, tid=tracks[i % len(tracks)]).run()
        except Exception as exc:  # noqa: BLE001 - a round that blows up is a failure to report
            result = {"kind": kind, "mode": "?", "over": 0, "failures": [repr(exc)]}
        finally:
            env.cleanup()
        result["round"] = i
        result["durability"] = durability
        results.append(result)
        with server.state.lock:
            server.state.faults.clear()
    elapsed = time.monotonic() - started
    summary = summarize(results, elapsed)
    print("\n" + summary)
    (Path(request.config.rootpath) / "tests" / ".chaos-summary.txt").write_text(summary) if (
        rounds >= 100) else None  # fmt: skip
    bad = [r for r in results if r["failures"]]
    assert not bad, json.dumps(bad, indent=1)


def summarize(results: list[dict], elapsed: float) -> str:
    by_kind = collections.defaultdict(list)
    for r in results:
        by_kind[r["kind"]].append(r)
    lines = [f"chaos: {len(results)} rounds in {elapsed:.0f} s, "
             f"{sum(1 for r in results if r['failures'])} failed",  # fmt: skip
             "| fault | rounds | fg/bg | power-cut/crash | failures | max bytes over minimum "
             "| mean over |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for kind in FAULTS:
        rs = by_kind.get(kind, [])
        if not rs:
            continue
        fg = sum(1 for r in rs if r["mode"] == "fg")
        overs = [r["over"] for r in rs]
        pc = sum(1 for r in rs if r.get("durability") == "power-cut")
        lines.append(f"| {kind} | {len(rs)} | {fg}/{len(rs) - fg} | {pc}/{len(rs) - pc} | "
                     f"{sum(1 for r in rs if r['failures'])} | {max(overs)} | "
                     f"{sum(overs) // len(overs)} |")  # fmt: skip
    return "\n".join(lines)


# -- the concurrency storm ---------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_concurrency_storm(request, env):
    seconds = request.config.getoption("--storm-seconds")
    ids = [str(t) for t in sorted(env.server.state.tracks)[:6]]
    for rid in ids:
        env.track(int(rid), size=1_500_000)
    env.server.state.throttle_bps = 2_000_000
    stop_at = time.monotonic() + seconds
    problems: list[str] = []
    counts = collections.Counter()

    def actor(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop_at:
            cmd = rng.choice(["download", "download", "pause", "resume", "cancel", "list", "bg"])
            rid = rng.choice(ids)
            args = {"download": ["download", rid], "pause": ["pause", rid],
                    "resume": ["resume", rid], "cancel": ["cancel", rid],
                    "list": ["list", "--json"], "bg": ["download", "-b", rid]}[cmd]  # fmt: skip
            proc = subprocess.run([HALFTUNES, *args], env=env.env, capture_output=True,
                                  text=True, timeout=120)  # fmt: skip
            counts[(cmd, proc.returncode)] += 1
            if "Traceback" in proc.stderr:
                problems.append(f"{args}: traceback {proc.stderr[-500:]}")
            if cmd == "list":
                if proc.returncode != 0:
                    problems.append(f"list failed: {proc.stderr}")
                else:
                    rows = json.loads(proc.stdout)
                    if len({r["id"] for r in rows}) != len(rows):
                        problems.append("duplicate records")
            elif proc.returncode not in (0, 1, 2):
                problems.append(f"{args} exited {proc.returncode}: {proc.stderr}")

    threads = [threading.Thread(target=actor, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # settle: stop everything, then look for orphans in both directions
    assert env.run("pause", "--all").returncode == 0
    if env.worker_pid() is not None:
        env.wait_for(lambda: not any(r["status"] in ("running", "queued")
                                     for r in env.json("list")), timeout=30)  # fmt: skip
    rows = env.json("list")
    parts_on_disk = (
        {str(p) for p in env.download_dir.glob("*.part")} if env.download_dir.exists() else set()
    )
    parts_in_records = {r["part_path"] for r in rows if r["status"] != "completed"}
    for part in parts_on_disk - parts_in_records:
        problems.append(f"orphaned partial {part}")
    for r in rows:
        if r["status"] in ("paused", "failed") and r["bytes_received"] > 0:
            if not Path(r["part_path"]).exists():
                problems.append(f"record {r['id']} lost its partial")
            elif os.path.getsize(r["part_path"]) != r["bytes_received"]:
                problems.append(f"record {r['id']} checkpoint != partial size")
        if r["status"] == "completed" and Path(r["path"]).exists():
            if sha256_file(r["path"]) != env.expected_sha(int(r["id"])):
                problems.append(f"corrupt file for {r['id']}")
    # and everything left can still finish
    env.server.state.throttle_bps = None
    result = env.run("resume", "--all", timeout=120)
    assert result.returncode == 0, result.stderr
    for r in env.json("list"):
        if r["status"] != "completed":
            problems.append(f"{r['id']} did not finish: {r['status']} {r['error']}")
        elif sha256_file(r["path"]) != env.expected_sha(int(r["id"])):
            problems.append(f"corrupt file for {r['id']} after resume")
    print(f"\nstorm: {seconds} s, commands {dict(counts)}")
    reap_children()
    assert not problems, "\n".join(problems[:20])
