"""Fault injection: seeded rounds of transfer + fault + resume, and a concurrency storm.

`make test` runs a short variant; `make chaos` runs 320 rounds, a one-minute storm and 300
odd-number examples:
    pytest tests/test_chaos.py --chaos-rounds=320 --storm-seconds=60 --odd-examples=300 -s
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import HALFTUNES, Env, LockWatch, WriterAudit, reap_children, sha256_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from halftunes_cli.liveness import is_lock_held
from halftunes_cli.ranges import OVERLAP_BYTES

# Planned faults (the first row) and the faults nobody planned (issue 18): a state file held
# locked past the busy timeout, too few file descriptors, a full state disk, fsync failing with
# EIO, the state dir deleted under the worker, a stop racing many transfers' ends, a closed
# progress stream.
FAULTS = [
    "kill9",
    "sigterm",
    "sigint",
    "drop",
    "503",
    "stall",
    "etag",
    "ignore_range",
    "short",
    "state_locked",
    "fd_limit",
    "state_disk_full",
    "fsync_eio",
    "state_dir_deleted",
    "stop_race",
    "closed_progress",
]
THROTTLE = 3_000_000  # bytes/s per request: a round's transfer lasts about half a second
CHECKPOINT_BYTES = THROTTLE  # one checkpoint interval (1 s) of data
DURABILITY = ["power-cut", "crash"]
BUSY_SECONDS = 0.5  # the state file's busy timeout in these rounds (HALFTUNES_BUSY_TIMEOUT_...)

# Held by a process for as long as its stdin stays open: the state file's write lock, as a
# `sqlite3` shell in a transaction holds it while the transfer has the file open (readers go
# on; every checkpoint and settlement waits, then meets "busy").
HOLD_STATE = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
conn.execute("UPDATE meta SET value = value")
print("held", flush=True)
sys.stdin.read()
"""
# A Python whose fsync fails with EIO for partial files (a dying disk), for one command.
FAILING_FSYNC = """
import errno, os
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
_real = os.fsync
def _fsync(fd):
    if os.readlink(f"/proc/self/fd/{fd}").endswith(".part"):
        raise OSError(errno.EIO, "Input/output error")
    return _real(fd)
os.fsync = _fsync
"""


def _wait_worker_gone(env: Env) -> None:
    pid = env.worker_pid()
    if pid is not None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    env.wait_for(lambda: not is_lock_held(env.state_dir / "worker.lock"), timeout=20)


def _fd_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


class Round:
    def __init__(self, env: Env, seed: int, kind: str, tid: int):
        self.env = env
        self.rng = random.Random(seed)
        self.kind = kind
        self.tid = tid
        self.rid = str(tid)
        self.mode = self.rng.choice(["fg", "bg"])
        if kind == "state_dir_deleted":
            self.mode = "bg"  # the worker is the one whose state dir goes
        elif kind in ("closed_progress", "fd_limit"):
            self.mode = "fg" if kind == "closed_progress" else self.mode
        self.size = self.rng.randint(1_000_000, 2_000_000)
        self.discarded = 0  # bytes a correct client must fetch again (restarts)
        self.resumes: list[tuple[float, int]] = []  # (when, bytes in the partial)
        self.began = time.time()
        self.notes: list[str] = []
        self.skipped = ""

    def run(self) -> dict:
        env, st = self.env, self.env.server.state
        st.sizes[self.tid] = self.size
        prefix = f"/previews/{self.tid}/"
        at = self.rng.randint(self.size // 10, self.size * 8 // 10)
        extra_env = {"HALFTUNES_REQUEST_TIMEOUT": "1"}
        first_env = dict(extra_env)  # the first command's (a fault may live in it)
        first_kw: dict = {}
        if self.kind == "drop":
            env.fault(path=prefix, kind="drop", after=at)
        elif self.kind == "503":
            env.fault(path=prefix, kind="drop", after=at)
            env.fault(path=prefix, kind="status", status=503, retry_after=self.rng.choice([0, 1]))
        elif self.kind == "stall":
            env.fault(path=prefix, kind="stall", after=at, seconds=2)
        elif self.kind == "short":
            env.fault(path=prefix, kind="short", extra=self.rng.randint(1, 100_000))
        elif self.kind == "fsync_eio":
            hooks = env.tmp / "failing-fsync"
            hooks.mkdir()
            (hooks / "sitecustomize.py").write_text(FAILING_FSYNC)
            first_env["PYTHONPATH"] = str(hooks)
        elif self.kind == "fd_limit":
            first_kw["preexec_fn"] = _fd_limit(self.rng.randint(8, 24))
        elif self.kind == "state_disk_full" and not self._mount_small_state_disk():
            return self.skip("cannot mount a tmpfs here")
        proc = None
        if self.mode == "fg":
            progress = ["--progress", "json"] if self.kind == "closed_progress" else []
            proc = env.spawn("download", self.rid, *progress, env=first_env, **first_kw)
        else:
            r = env.run_process("download", "-b", self.rid, env=first_env, **first_kw)
            assert r.returncode in (0, 1), r.stderr  # (1: a fault hit the command itself)
        if self.kind in (
            "kill9",
            "sigterm",
            "sigint",
            "etag",
            "ignore_range",
            "state_locked",
            "state_disk_full",
            "state_dir_deleted",
        ):
            done = (lambda: proc.poll() is not None) if proc else (lambda: False)
            env.wait_for(
                lambda: (
                    env.part_size(self.rid) >= at
                    or done()
                    or (env.state_record(self.rid) or {}).get("status") == "completed"
                ),
                timeout=30,
            )
            self.interrupt(proc)
        if self.kind == "closed_progress":
            assert proc.stderr.readline()  # `2>&1 | head -1`: the reader reads one line, goes
            proc.stderr.close()
            proc.wait(timeout=60)
        elif proc is not None:
            proc.communicate(timeout=60)
        if self.mode == "bg":
            env.run("wait", self.rid, "--timeout", "60", timeout=120)
            _wait_worker_gone(env)  # (the next command's worker has the round's normal env)
        for _attempt in range(6):
            row = env.state_record(self.rid)
            if row is not None and row["status"] == "completed":
                break
            self.resumes.append((time.time(), env.part_size(self.rid)))
            again = "download" if row is None else "resume"  # (no record: it was refused)
            if self.mode == "fg":
                env.run(again, self.rid, env=extra_env, timeout=120)
            else:
                env.run(again, "-b", self.rid, env=extra_env)
                env.run("wait", self.rid, "--timeout", "60", timeout=120)
        return self.check()

    def skip(self, why: str) -> dict:
        self.skipped = why
        return {"kind": self.kind, "mode": self.mode, "over": 0, "failures": [], "skipped": why}

    def _mount_small_state_disk(self) -> bool:
        """The state dir on a 1 MiB tmpfs of its own (root only): filled up mid-transfer."""
        self.env.state_dir.mkdir(parents=True, exist_ok=True)
        made = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(self.env.state_dir)],
            capture_output=True,
        )
        self.mounted = made.returncode == 0
        return self.mounted

    def unmount(self) -> None:
        if getattr(self, "mounted", False):
            subprocess.run(["umount", "-l", str(self.env.state_dir)], capture_output=True)

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
        if self.kind == "state_locked":
            holder = subprocess.Popen(
                [sys.executable, "-c", HOLD_STATE, str(env.state_dir / "downloads.db")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert holder.stdout.readline().strip() == "held"
            time.sleep(BUSY_SECONDS * 3)  # the fault: locked three times the busy timeout
            holder.stdin.close()
            holder.wait(timeout=10)
            return
        if self.kind == "state_disk_full":
            filler = env.state_dir / "filler"
            with open(filler, "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass  # full
            time.sleep(1.5)  # a checkpoint or two meet the full disk
            filler.unlink()
            return
        if self.kind == "state_dir_deleted":
            import shutil

            worker = LockWatch(env.state_dir / "worker.lock")
            shutil.rmtree(env.state_dir, ignore_errors=True)
            r = env.run_process("download", "-b", self.rid)  # the same id, queued again
            if r.returncode != 0:
                assert "being downloaded" in r.stderr, r.stderr
            worker.wait_free()  # it notices its state file is gone and leaves
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
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
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
        copies = [p.name for p in env.download_dir.glob("*") if not p.name.endswith(".part")]
        if len(copies) > 1:
            failures.append(f"second copies {copies}")  # a record was lost on the way
        if env.state_dir.exists():
            aside = [p.name for p in env.state_dir.glob("*.corrupt-*")]
            if aside:
                failures.append(f"state file moved aside: {aside}")
        if self.kind == "closed_progress" and self.resumes:
            failures.append("a closed progress stream stopped the transfer")
        served = sum(
            e["bytes_sent"] for e in env.preview_requests(self.tid) if e["time"] >= self.began
        )
        ranged = [
            e for e in env.preview_requests(self.tid) if e["time"] >= self.began and e["range"]
        ]
        over = served - self.size - self.discarded
        if self.kind in PLANNED and over > CHECKPOINT_BYTES + OVERLAP_BYTES * len(ranged):
            failures.append(f"re-fetched {over} bytes over the minimum")
        for when, had in self.resumes:  # every resume compares the overlap before appending
            first = next((e for e in env.preview_requests(self.tid) if e["time"] >= when), None)
            # (after an unplanned fault the record may vouch for less, or for nothing: then
            # a restart from 0 is right; after a planned one, exactly the overlap)
            allowed = (
                {env.resume_range(had)}
                if self.kind in PLANNED
                else {
                    env.resume_range(had),
                    env.resume_range(row["bytes_received"] if row else 0),
                    None,
                }
            )
            if had > 0 and first is not None and first["range"] not in allowed:
                failures.append(f"resume with {had} bytes asked {first['range']}")
        return {"kind": self.kind, "mode": self.mode, "over": over, "failures": failures}


# Faults after which no more than a checkpoint interval may be fetched twice; after the others
# (the state file lost, the disk lying) a restart from 0 is the right answer.
PLANNED = {
    "kill9",
    "sigterm",
    "sigint",
    "drop",
    "503",
    "stall",
    "etag",
    "ignore_range",
    "short",
    "state_locked",
    "closed_progress",
}


class StopRaceRound:
    """Many small downloads ending while `pause --all` or `cancel --all` arrives at a random
    moment: a download that completed is never forgotten nor shown paused, a stopped one
    keeps its checkpoint (pause) or loses record and partial (cancel), and downloading the
    whole list again makes no second copy of anything (no record was lost)."""

    COUNT = 30

    def __init__(self, env: Env, seed: int, tracks: list[int]):
        self.env = env
        self.rng = random.Random(seed)
        self.tids = self.rng.sample(tracks, self.COUNT)
        self.mode = self.rng.choice(["fg", "bg"])
        self.action = self.rng.choice(["pause", "cancel"])
        self.kind = "stop_race"

    def run(self) -> dict:
        env = self.env
        for tid in self.tids:
            env.server.state.sizes[tid] = self.rng.randint(20_000, 120_000)
        ids = [str(t) for t in self.tids]
        if self.mode == "fg":
            proc = env.spawn("download", *ids)
        else:
            proc = None
            assert env.run_process("download", "-b", *ids).returncode == 0
        time.sleep(self.rng.uniform(0.0, 1.2))  # the fault: a stop at a random moment
        stopped = env.run_process(self.action, "--all")
        failures = [] if stopped.returncode == 0 else [f"{self.action} --all: {stopped.stderr}"]
        if proc is not None:
            proc.communicate(timeout=60)
        else:
            env.run("wait", "--timeout", "60", timeout=120)
            _wait_worker_gone(env)
        failures += self.invariants(ids)
        again = env.run("download", *ids, timeout=120)  # everything, once more
        if again.returncode != 0:
            failures.append(f"download again: {again.stderr[-300:]}")
        failures += self.invariants(ids, all_done=True)
        return {
            "kind": self.kind,
            "mode": self.mode,
            "over": 0,
            "failures": failures,
            "action": self.action,
        }

    def invariants(self, ids: list[str], all_done: bool = False) -> list[str]:
        env = self.env
        rows = {i: env.state_record(i) for i in ids}
        failures = []
        on_disk = {str(p) for p in env.download_dir.glob("*") if not p.name.endswith(".part")}
        parts = {str(p) for p in env.download_dir.glob("*.part")}
        completed = {r["path"]: r for r in rows.values() if r and r["status"] == "completed"}
        for path in on_disk - set(completed):
            failures.append(f"a final file without its completed record: {Path(path).name}")
        for path, row in completed.items():
            if path not in on_disk:
                failures.append(f"{row['id']}: completed but its file is gone")
            elif sha256_file(path) != env.expected_sha(int(row["id"])):
                failures.append(f"{row['id']}: CORRUPT FILE")
        for rid, row in rows.items():
            if row is None:
                continue
            if row["status"] == "paused" and row["bytes_received"] > 0:
                if row["part_path"] not in parts:
                    failures.append(f"{rid}: paused but its partial is gone")
                elif os.path.getsize(row["part_path"]) != row["bytes_received"]:
                    failures.append(f"{rid}: checkpoint != partial size")
            if all_done and row["status"] != "completed":
                failures.append(f"{rid}: {row['status']} after downloading again")
        owned = {r["part_path"] for r in rows.values() if r and r["status"] != "completed"}
        for part in parts - owned:
            failures.append(f"a partial without a record: {Path(part).name}")
        if all_done and len(on_disk) != len(ids):
            failures.append(f"{len(on_disk)} files for {len(ids)} ids (second copies?)")
        return failures


@pytest.mark.timeout(3600)
def test_chaos_rounds(request, tmp_path, server):
    rounds = request.config.getoption("--chaos-rounds")
    server.state.throttle_bps = THROTTLE
    tracks = [t for t, v in sorted(server.state.tracks.items()) if "previewUrl" in v]
    results = []
    started = time.monotonic()
    audit = WriterAudit().start()  # one writer per partial, watched from outside all along
    for i in range(rounds):
        root = tmp_path / f"round-{i}"
        root.mkdir()
        env = Env(root, server)
        kind = FAULTS[i % len(FAULTS)]
        # every fault in both durability modes: alternating within a pass, and swapped in the
        # next pass (so one pass covers half of the faults in each mode, two passes all)
        durability = DURABILITY[(i + i // len(FAULTS)) % len(DURABILITY)]
        env.env["HALFTUNES_DURABILITY"] = durability
        env.env["HALFTUNES_BUSY_TIMEOUT_SECONDS"] = str(BUSY_SECONDS)
        game = (
            StopRaceRound(env, 1000 + i, tracks)
            if kind == "stop_race"
            else Round(env, seed=1000 + i, kind=kind, tid=tracks[i % len(tracks)])
        )
        try:
            result = game.run()
        except Exception as exc:  # noqa: BLE001 - a round that blows up is a failure to report
            result = {"kind": kind, "mode": "?", "over": 0, "failures": [repr(exc)]}
        finally:
            env.cleanup()
            if isinstance(game, Round):
                game.unmount()
        result["round"] = i
        result["durability"] = durability
        results.append(result)
        with server.state.lock:
            server.state.faults.clear()
    writers = audit.stop()
    elapsed = time.monotonic() - started
    summary = summarize(results, elapsed, writers, audit.samples)
    print("\n" + summary)
    (Path(request.config.rootpath) / "tests" / ".chaos-summary.txt").write_text(summary) if (
        rounds >= 100
    ) else None
    bad = [r for r in results if r["failures"]]
    assert not bad, json.dumps(bad, indent=1)
    assert not writers, writers[:10]


def summarize(results: list[dict], elapsed: float, writers: list[str], samples: int) -> str:
    by_kind = collections.defaultdict(list)
    for r in results:
        by_kind[r["kind"]].append(r)
    skipped = sum(1 for r in results if r.get("skipped"))
    lines = [
        f"chaos: {len(results)} rounds in {elapsed:.0f} s, "
        f"{sum(1 for r in results if r['failures'])} failed, {skipped} skipped; "
        f"partials with two writers at once: {len(writers)} ({samples} audits of /proc)",
        "| fault | rounds | fg/bg | power-cut/crash | failures | max bytes over minimum "
        "| mean over |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in FAULTS:
        rs = [r for r in by_kind.get(kind, []) if not r.get("skipped")]
        if not rs:
            continue
        fg = sum(1 for r in rs if r["mode"] == "fg")
        overs = [r["over"] for r in rs]
        pc = sum(1 for r in rs if r.get("durability") == "power-cut")
        lines.append(
            f"| {kind} | {len(rs)} | {fg}/{len(rs) - fg} | {pc}/{len(rs) - pc} | "
            f"{sum(1 for r in rs if r['failures'])} | {max(overs)} | "
            f"{sum(overs) // len(overs)} |"
        )
    return "\n".join(lines)


# -- odd numbers in every numeric header and API field -----------------------------------------

NUMERIC_HEADERS = ["Content-Length", "Retry-After", "Content-Range"]
API_FIELDS = ["trackId", "collectionId", "artistId", "trackTimeMillis", "trackNumber"]
# What a header can carry on the wire (http.server sends latin-1; the rest goes as UTF-8
# bytes, which the client reads as latin-1), and digits of every script for the API's JSON.
ODD_TEXT = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    [
        "²",
        "¹",
        "١٢٣",
        "  7 ",
        "-1",
        "1e3",
        "0x10",
        "1,2",
        "99999999999999999999999",
        "",
        "7, 7",
        "٣",
    ]
)


def test_odd_numbers_never_crash(request, tmp_path, server):
    """Whatever a numeric header or API field holds, a command ends with an exit status and
    at most a clear line: never a traceback, never "internal error", never a wrong file."""
    examples = request.config.getoption("--odd-examples")
    counter = iter(range(10**6))

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        where=st.sampled_from(NUMERIC_HEADERS + API_FIELDS),
        value=ODD_TEXT,
        status=st.sampled_from([200, 503]),
    )
    def one(where: str, value: str, status: int) -> None:
        root = tmp_path / f"odd-{next(counter)}"
        root.mkdir()
        env = Env(root, server)
        env.env["HALFTUNES_RETRIES"] = "1"
        env.env["HALFTUNES_BUSY_TIMEOUT_SECONDS"] = str(BUSY_SECONDS)
        tid = 1000003
        server.state.sizes[tid] = 50_000
        with server.state.lock:
            server.state.faults.clear()
        try:
            if where in API_FIELDS:
                item = {**server.state.tracks[tid], where: value}
                env.fault(path="/search", kind="results", results=[item])
                result = env.run("search", "odd", "--json")
                assert result.returncode in (0, 1), result.stderr
                again = env.run("search", "odd", "--offline")  # from the cache
                assert again.returncode in (0, 1), again.stderr
                outputs = [result, again]
            else:
                # a header value on the wire has no line breaks or other controls but tab
                value = "".join(c for c in value if c == "\t" or (ord(c) >= 32 and c != "\x7f"))
                if status == 503:  # (no retry: a valid Retry-After of hours is honoured)
                    env.fault(
                        path=f"/previews/{tid}/",
                        kind="status",
                        status=status,
                        **({"retry_after": value} if where == "Retry-After" else {}),
                    )
                else:
                    env.fault(path=f"/previews/{tid}/", kind="header", name=where, value=value)
                result = env.run("download", str(tid), env={"HALFTUNES_RETRIES": "0"})
                assert result.returncode in (0, 1), result.stderr
                outputs = [result]
                row = env.state_record(str(tid))
                lied = where == "Content-Length" and value.strip(" \t") != ""  # a valid lie...
                if row is not None and row["status"] == "completed" and not lied:
                    assert sha256_file(row["path"]) == server.state.sha256_of(tid)
            for out in outputs:
                assert "internal error" not in out.stderr and "Traceback" not in out.stderr
                assert len(out.stderr.strip().splitlines()) <= 4, out.stderr
        finally:
            env.cleanup()

    one()


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
            args = {
                "download": ["download", rid],
                "pause": ["pause", rid],
                "resume": ["resume", rid],
                "cancel": ["cancel", rid],
                "list": ["list", "--json"],
                "bg": ["download", "-b", rid],
            }[cmd]
            proc = subprocess.run(
                [HALFTUNES, *args], env=env.env, capture_output=True, text=True, timeout=120
            )
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
        env.wait_for(
            lambda: not any(r["status"] in ("running", "queued") for r in env.json("list")),
            timeout=30,
        )
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
        done = r["status"] == "completed" and Path(r["path"]).exists()
        if done and sha256_file(r["path"]) != env.expected_sha(int(r["id"])):
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


# -- one file over several connections, under faults -------------------------------------------
SEGMENT_FAULTS = ["kill9", "sigterm", "sigint", "drop", "503", "changed", "same_etag_changed"]


def _segmented_round(env: Env, rng: random.Random, kind: str, tid: int) -> list[str]:
    """-x 4 of a 6 MB preview, a fault at a random moment, then `resume` until it is done:
    the file is the server's current version, byte for byte, and nothing is left over."""
    st = env.server.state
    size = rng.randint(5_000_000, 7_000_000)
    st.sizes[tid] = size
    rid, prefix = str(tid), f"/previews/{tid}/"
    extra = {"HALFTUNES_MAX_CONNECTIONS_PER_HOST": "4", "HALFTUNES_REQUEST_TIMEOUT": "2"}
    if kind == "drop":
        env.fault(path=prefix, kind="drop", after=rng.randint(10_000, 1_000_000), times=3)
    elif kind == "503":
        env.fault(path=prefix, kind="status", status=503, times=rng.randint(1, 3))
    elif kind == "same_etag_changed":
        st.styles[tid] = "sticky-etag"
    proc = env.spawn("download", "-x", "4", rid, env=extra)
    env.wait_for(
        lambda: proc.poll() is not None or env.part_size(rid) > 0, what="the transfer to start"
    )
    time.sleep(rng.uniform(0.05, 0.8))  # (a random moment in the transfer: the fault's)
    if kind == "kill9":
        proc.send_signal(signal.SIGKILL)
    elif kind == "sigterm":
        proc.send_signal(signal.SIGTERM)
    elif kind == "sigint":
        proc.send_signal(signal.SIGINT)
    elif kind in ("changed", "same_etag_changed"):
        env.run_process("pause", rid, env=extra)
    proc.communicate(timeout=60)
    done = (env.record(rid) or {}).get("status") == "completed"  # (before the fault came)
    if kind in ("changed", "same_etag_changed") and not done:
        st.versions[tid] = st.versions.get(tid, 1) + 1
    failures = []
    for _ in range(6):
        record = env.record(rid)
        if record is not None and record["status"] == "completed":
            break
        result = env.run_process("resume", rid, env=extra)
        if "Traceback" in result.stderr:
            failures.append(f"{kind}: a traceback: {result.stderr[-500:]}")
    record = env.record(rid)
    if record is None or record["status"] != "completed":
        return [*failures, f"{kind}: not completed after six resumes: {record}"]
    if sha256_file(record["path"]) != st.sha256_of(tid):
        failures.append(f"{kind}: the file is not the server's version {st.versions.get(tid, 1)}")
    if Path(record["part_path"]).exists():
        failures.append(f"{kind}: a partial left next to the finished file")
    return failures


@pytest.mark.timeout(1800)
def test_segmented_chaos_rounds(request, tmp_path, server):
    rounds = max(len(SEGMENT_FAULTS), request.config.getoption("--chaos-rounds") // 4)
    server.state.throttle_bps = 2_000_000  # per connection: about 0.8 s for four of them
    tracks = [t for t, v in sorted(server.state.tracks.items()) if "previewUrl" in v]
    failures: list[str] = []
    for i in range(rounds):
        root = tmp_path / f"segmented-{i}"
        root.mkdir()
        env = Env(root, server)
        env.env["HALFTUNES_DURABILITY"] = DURABILITY[i % 2]
        try:
            found = _segmented_round(
                env, random.Random(5000 + i), SEGMENT_FAULTS[i % len(SEGMENT_FAULTS)], tracks[i]
            )
            failures += [f"round {i}: {f}" for f in found]
        finally:
            env.cleanup()
            with server.state.lock:
                server.state.faults.clear()
    assert not failures, failures
