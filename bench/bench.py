"""`make bench`: halftunes side by side with curl, wget, aria2c and plain requests, on loopback.

Writes bench/RESULTS.md and bench/results.json. Every scenario alternates the tools, takes a
warm-up run and then the median of RUNS runs (min-max shown). Whole-process wall time, CPU
(user+sys) and peak RSS come from GNU time around each command.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HALFTUNES = str(Path(sys.executable).with_name("halftunes"))
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
GIB = 1 << 30
MIB = 1 << 20
WORK = Path(os.environ.get("BENCH_WORK", tempfile.mkdtemp(prefix="halftunes-bench-")))
TIME = shutil.which("time") or "/usr/bin/time"

results: dict = {"runs": RUNS, "scenarios": {}, "skipped": []}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- tools ---------------------------------------------------------------------------------------
def ensure_tools() -> dict[str, bool]:
    want = {"curl": "curl", "wget": "wget", "aria2c": "aria2", "nginx": "nginx-light", TIME: "time"}
    missing = [pkg for exe, pkg in want.items() if not shutil.which(exe) and not Path(exe).exists()]
    if missing and shutil.which("apt-get") and os.geteuid() == 0:
        log(f"installing {' '.join(missing)} with apt-get")
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", *missing],
            capture_output=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    have = {exe: bool(shutil.which(exe)) or Path(exe).exists() for exe in want}
    for exe, ok in have.items():
        if not ok:
            results["skipped"].append(f"{exe} not available: its rows are skipped")
    return have


def measure(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> dict:
    """Run cmd under GNU time: wall, user+sys CPU, peak RSS (KiB) of the whole process."""
    fmt = "%e %U %S %M"
    out = WORK / "time.out"
    began = time.perf_counter()
    proc = subprocess.run(
        [TIME, "-f", fmt, "-o", str(out), *cmd],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wall = time.perf_counter() - began
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed ({proc.returncode}): {proc.stderr[-400:]!r}")
    _e, u, s, m = out.read_text().strip().splitlines()[-1].split()
    return {"wall": wall, "cpu": float(u) + float(s), "rss_mib": int(m) / 1024}


def summarize(samples: list[dict], nbytes: int | None = None) -> dict:
    out = {}
    for key in ("wall", "cpu", "rss_mib"):
        vals = [s[key] for s in samples]
        out[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
    if nbytes:
        out["mib_per_s"] = nbytes / MIB / out["wall"]["median"]
    out["samples"] = samples
    return out


# -- servers -------------------------------------------------------------------------------------
class Servers:
    def __init__(self, have_nginx: bool, preview_size: int, count: int):
        self.static = WORK / "static"
        self.nginx = None
        self.static_url = None
        if have_nginx:
            self._start_nginx()
        args = [
            sys.executable,
            "-m",
            "halftunes_cli.catalog",
            "--port",
            "0",
            "--preview-size",
            str(preview_size),
            "--count",
            str(count),
        ]
        if self.static_url:
            subprocess.run(
                [*args, "--preview-base", self.static_url, "--write-previews", str(self.static)],
                check=True,
            )
            args += ["--preview-base", self.static_url]
        self.catalog = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        self.api = self.catalog.stdout.readline().strip()
        self.files = self.static_url or self.api

    def _start_nginx(self) -> None:
        import socket

        self.static.mkdir(parents=True, exist_ok=True)
        os.chmod(WORK, 0o755)  # nginx's workers run as an unprivileged user
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        conf = WORK / "nginx.conf"
        conf.write_text(f"""
worker_processes 1; daemon off; pid {WORK}/nginx.pid; error_log {WORK}/nginx.err;
events {{ worker_connections 1024; }}
http {{ access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;
  server {{ listen 127.0.0.1:{port}; root {self.static}; etag on;
    location / {{ types {{ }} default_type application/octet-stream; }} }} }}
""")
        self.nginx = subprocess.Popen(
            ["nginx", "-c", str(conf), "-p", str(WORK)], stderr=subprocess.DEVNULL
        )
        self.static_url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(self.static_url + "/", timeout=1)
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.05)
                continue
            return

    def stop(self) -> None:
        self.catalog.terminate()
        self.catalog.wait()
        if self.nginx is not None:
            self.nginx.terminate()
            self.nginx.wait()


def make_big_file(servers: Servers, name: str, size: int) -> str:
    if servers.static_url:
        path = servers.static / name
        if not path.exists() or path.stat().st_size != size:
            from halftunes_cli.testing.catalog import body_slice

            with open(path, "wb") as f:
                for start in range(0, size, 16 * MIB):
                    f.write(body_slice(11, start, min(size, start + 16 * MIB)))
        return f"{servers.static_url}/{name}"
    return f"{servers.api}/files/{name}?size={size}&seed=11"


def ht_env(state: Path, downloads: Path, api: str) -> dict:
    return {
        **os.environ,
        "HALFTUNES_API_URL": api,
        "HALFTUNES_STATE_DIR": str(state),
        "HALFTUNES_DOWNLOAD_DIR": str(downloads),
    }


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


REQUESTS_BASELINE = """
import sys, requests
url, out = sys.argv[1], sys.argv[2]
with requests.get(url, stream=True, timeout=60) as r:
    r.raise_for_status()
    with open(out, "wb") as f:
        for chunk in r.iter_content(1 << 20):
            f.write(chunk)
"""


# -- scenarios -----------------------------------------------------------------------------------
def s1_large(servers: Servers, have: dict, size: int = GIB) -> None:
    url = make_big_file(servers, "big.bin", size)
    out = WORK / "s1"
    baseline = WORK / "baseline.py"
    baseline.write_text(REQUESTS_BASELINE)

    def ht(d: Path) -> list[str]:
        return [HALFTUNES, "--session", "ephemeral", "-q", "download", url, "-P", str(d)]

    tools = {
        "halftunes": ht,
        "halftunes (durability=crash)": ht,
        "requests": lambda d: [sys.executable, str(baseline), url, str(d / "big.bin")],
    }
    if have["curl"]:
        tools["curl"] = lambda d: ["curl", "-sS", "-o", str(d / "big.bin"), url]
        # the durable peer: curl, then an fsync of its file (coreutils sync FILE)
        tools["curl + fsync"] = lambda d: [
            "sh",
            "-c",
            f"curl -sS -o '{d}/big.bin' '{url}' && sync '{d}/big.bin'",
        ]
    if have["wget"]:
        tools["wget"] = lambda d: ["wget", "-q", "-O", str(d / "big.bin"), url]
    # Not a download: how long this disk takes to make 1 GiB durable (halftunes fsyncs its
    # checkpoints and the finished file; curl, wget and aria2c leave the data in the cache).
    tools["floor: dd conv=fsync"] = lambda d: [
        "dd",
        "if=/dev/zero",
        f"of={d / 'big.bin'}",
        "bs=1M",
        f"count={size // MIB}",
        "conv=fsync",
        "status=none",
    ]
    if have["aria2c"]:
        tools["aria2c -x1"] = lambda d: [
            "aria2c",
            "-q",
            "-x1",
            "--allow-overwrite=true",
            "--file-allocation=none",
            "-d",
            str(d),
            "-o",
            "big.bin",
            url,
        ]
    samples = alternate(
        tools,
        out,
        lambda d: (d / "big.bin").stat().st_size == size,
        settle=2.0,
        envs={"halftunes (durability=crash)": CRASH},
    )
    results["scenarios"]["S1 one 1 GiB file"] = {k: summarize(v, size) for k, v in samples.items()}


CRASH = {**os.environ, "HALFTUNES_DURABILITY": "crash"}


def alternate(tools: dict, out: Path, check, settle: float = 0.0, envs: dict | None = None) -> dict:
    samples: dict[str, list] = {k: [] for k in tools}
    for run in range(RUNS + 1):  # run 0 is the warm-up
        for name, build in tools.items():
            d = fresh(out)
            sample = measure(build(d), env=(envs or {}).get(name))
            if not check(d):
                raise RuntimeError(f"{name} produced a wrong result")
            if run > 0:
                samples[name].append(sample)
            shutil.rmtree(d, ignore_errors=True)
            if settle:
                time.sleep(settle)  # freed pages go back to the host; every tool pays the same
        log(
            f"  run {run}: "
            + ", ".join(f"{k} {v[-1]['wall']:.2f}s" for k, v in samples.items() if v)
        )
    return samples


def cached_ids(servers: Servers, state: Path, n: int) -> tuple[list[str], list[str]]:
    """n track ids with previews; halftunes' track cache in `state` is warmed with them."""
    items: list[dict] = []
    first = 1_000_001
    while len(items) < n:
        ids = ",".join(str(i) for i in range(first, first + 150))
        first += 150
        got = json.loads(urllib.request.urlopen(f"{servers.api}/lookup?id={ids}").read())
        if not got["results"]:
            break
        # plain preview names only: a static server resolves the hostile "../" ones elsewhere
        items += [
            i
            for i in got["results"]
            if i.get("previewUrl", "").rsplit("/", 1)[-1].startswith("preview.")
        ]
    items = items[:n]
    ids = [str(i["trackId"]) for i in items]
    env = ht_env(state, WORK / "warm", servers.api)
    for start in range(0, len(ids), 150):  # lookups go into the cache, not on the clock
        subprocess.run(
            [HALFTUNES, "download", "--json", *ids[start : start + 150], "-o", str(WORK / "warm")],
            env=env,
            capture_output=True,
        )
    with sqlite3.connect(state / "downloads.db") as c:
        c.execute("DELETE FROM downloads")
    shutil.rmtree(WORK / "warm", ignore_errors=True)
    return ids, [i["previewUrl"] for i in items]


def s2_batch(servers: Servers, have: dict, n: int = 200) -> None:
    state = fresh(WORK / "s2-state")
    ids, urls = cached_ids(servers, state, n)
    assert len(ids) == n, len(ids)
    listing = WORK / "s2-urls.txt"
    listing.write_text("\n".join(urls) + "\n")
    out = WORK / "s2"
    aria_list = WORK / "s2-aria.txt"
    aria_list.write_text("".join(f"{u}\n  out=p{i}.m4a\n" for i, u in enumerate(urls)))

    def halftunes(d):
        db = state / "downloads.db"
        with sqlite3.connect(db) as c:  # keep the cached tracks, forget the downloads
            c.execute("DELETE FROM downloads")
        return [HALFTUNES, "-q", "download", *ids, "-P", str(d)]

    floor = WORK / "s2-floor.py"
    floor.write_text(
        "import os, sys\n"
        "data = bytes(1 << 20)\n"
        f"for i in range({n}):\n"
        "    with open(os.path.join(sys.argv[1], f'p{i}'), 'wb') as f:\n"
        "        f.write(data); f.flush(); os.fsync(f.fileno())\n"
    )
    tools = {
        "halftunes": halftunes,
        # the same without measuring task metrics: what measuring costs (< 1% is the goal)
        "halftunes (task metrics off)": halftunes,
        "halftunes (durability=crash)": halftunes,
        # not a download: writing the same bytes durably (an fsync per file), no network
        "floor: write+fsync per file": lambda d: [sys.executable, str(floor), str(d)],
    }
    env = ht_env(state, out, servers.api)
    if have["curl"]:
        tools["xargs -P 6 curl"] = lambda d: [
            "sh",
            "-c",
            f"cd {d} && awk '{{print NR\" \"$0}}' "
            f"{listing} | xargs -P 6 -n 2 sh -c 'curl -sS -o p$0.m4a $1'",
        ]
    if have["wget"]:
        # every preview is called preview.m4a: wget numbers them (.1, .2, ...)
        tools["wget -i"] = lambda d: ["wget", "-q", "-i", str(listing), "-P", str(d), "-nd"]
        # the durable peer: wget, then one syncfs of the file system (sync -f)
        tools["wget -i + sync -f"] = lambda d: [
            "sh",
            "-c",
            f"wget -q -i '{listing}' -P '{d}' -nd && sync -f '{d}'",
        ]
    if have["aria2c"]:
        tools["aria2c -j 6 -i"] = lambda d: [
            "aria2c",
            "-q",
            "-j",
            "6",
            "-i",
            str(aria_list),
            "-d",
            str(d),
            "--file-allocation=none",
        ]

    def check(d: Path) -> bool:
        files = [p for p in d.rglob("*") if p.is_file() and not p.name.endswith(".part")]
        return len(files) == n

    samples: dict[str, list] = {k: [] for k in tools}
    pair = ["halftunes", "halftunes (task metrics off)"]  # measured back to back
    for run in range(RUNS + 1):
        # the pair first, in turns (the first tool of a run pays for the last run's cleanup)
        order = (pair if run % 2 else pair[::-1]) + [k for k in tools if k not in pair]
        for name in order:
            build = tools[name]
            d = fresh(out)
            cmd = build(d)
            envs = {
                "halftunes": env,
                "halftunes (durability=crash)": {**env, **{"HALFTUNES_DURABILITY": "crash"}},
                "halftunes (task metrics off)": {**env, **{"HALFTUNES_NO_METRICS": "1"}},
            }
            sample = measure(cmd, env=envs.get(name))
            if not check(d):
                raise RuntimeError(f"S2 {name} did not fetch {n} files")
            if run > 0:
                samples[name].append(sample)
        log(
            f"  run {run}: "
            + ", ".join(f"{k} {v[-1]['wall']:.2f}s" for k, v in samples.items() if v)
        )
    results["scenarios"]["S2 200 previews of 1 MiB"] = {
        k: summarize(v, n * MIB) for k, v in samples.items()
    }


def s3_scaling(servers_small: Servers) -> None:
    state = fresh(WORK / "s3-state")
    ids, _ = cached_ids(servers_small, state, 1000)
    per_file = {}
    for n in (10, 100, 1000):
        if len(ids) < n:
            results["skipped"].append(f"S3 batch of {n}: catalog has only {len(ids)} previews")
            continue
        walls = []
        for _ in range(max(3, RUNS // 2) + 1):
            with sqlite3.connect(state / "downloads.db") as c:
                c.execute("DELETE FROM downloads")
            out = fresh(WORK / "s3")
            env = ht_env(state, out, servers_small.api)
            walls.append(measure([HALFTUNES, "-q", "download", *ids[:n]], env=env)["wall"])
        med = statistics.median(walls[1:])
        per_file[n] = med / n
        log(f"  S3 {n}: {med:.2f}s, {1000 * med / n:.2f} ms/file")
    # 10,000 records already in the state file
    big = fresh(WORK / "s3-big")
    from halftunes_cli.records import Records
    from halftunes_cli.store import Store

    # Seeded straight into the table (a fixture, not a transition); then the real checkpoint.
    store = Store(big)
    records = Records(store)
    with store.transaction() as conn:
        for i in range(10_000):
            store.insert_record(
                conn,
                {
                    "id": f"r{i}",
                    "url": f"https://x/{i}.m4a",
                    "path": f"/tmp/none/{i}.m4a",
                    "part_path": f"/tmp/none/{i}.m4a.part",
                    "status": "completed",
                    "bytes_received": 1000,
                    "bytes_total": 1000,
                    "title": f"Track {i}",
                },
            )
    with store.transaction() as conn:
        store.update_record(conn, "r5000", status="running", owner=records.owner_token())
    ckpt = []
    for _ in range(50):
        t = time.perf_counter()
        records.checkpoint("r5000", records.owner_token(), 500, 1000, '"e"', None)
        ckpt.append(time.perf_counter() - t)
    env = ht_env(big, fresh(WORK / "s3-one"), servers_small.api)
    lists = [measure([HALFTUNES, "list", "--json"], env=env)["wall"] for _ in range(RUNS + 1)][1:]
    one = []
    for _ in range(RUNS + 1):
        subprocess.run([HALFTUNES, "cancel", ids[0]], env=env, capture_output=True)
        one.append(measure([HALFTUNES, "-q", "download", ids[0]], env=env)["wall"])
    records.close()
    results["scenarios"]["S3 scaling"] = {
        "per_file_seconds": per_file,
        "ratio_1000_vs_10": per_file.get(1000, 0) / per_file[10] if 10 in per_file else None,
        # marginal cost: slope of total time from 100 to 1000 files
        "slope_ms_per_file": (
            1000 * (per_file[1000] * 1000 - per_file[100] * 100) / 900
            if 1000 in per_file and 100 in per_file
            else None
        ),
        "list_json_10k_seconds": statistics.median(lists),
        "single_download_10k_seconds": statistics.median(one[1:]),
        "checkpoint_10k_ms": 1000 * statistics.median(ckpt),
    }


def s4_startup() -> None:
    empty = fresh(WORK / "s4-state")
    env = {**os.environ, "HALFTUNES_STATE_DIR": str(empty)}
    cmds = {
        "halftunes --version": [HALFTUNES, "--version"],
        "halftunes --help": [HALFTUNES, "--help"],
        "halftunes list (empty)": [HALFTUNES, "list"],
        "python -c 'import typer'": [sys.executable, "-c", "import typer"],
        "python -c pass": [sys.executable, "-c", "pass"],
    }
    samples: dict[str, list] = {k: [] for k in cmds}
    for run in range(2 * RUNS + 1):
        for name, cmd in cmds.items():
            s = measure(cmd, env=env)
            if run:
                samples[name].append(s)
    results["scenarios"]["S4 start-up"] = {k: summarize(v) for k, v in samples.items()}


def _admin(api: str, path: str, body: dict | None = None):
    req = urllib.request.Request(
        api + path,
        data=json.dumps(body).encode() if body is not None else None,
        method="POST" if body is not None else "GET",
    )
    return json.loads(urllib.request.urlopen(req).read())


def s5_control(api: str) -> None:
    """Latency from starting `pause` to the server seeing the transfer's bytes stop."""
    out = {
        "foreground_ms": [],
        "background_ms": [],
        "download_b_return_ms": [],
        "download_b_first_byte_ms": [],
    }
    tid = 1000001
    for _ in range(RUNS):
        for mode in ("fg", "bg"):
            state, dl = fresh(WORK / "s5-state"), fresh(WORK / "s5-dl")
            env = ht_env(state, dl, api)
            _admin(api, f"/_admin/track/{tid}", {"size": 50 * MIB})
            _admin(api, "/_admin/throttle", {"bps": 5 * MIB})
            _admin(api, "/_admin/clear", {})
            began = time.time()
            if mode == "fg":
                proc = subprocess.Popen(
                    [HALFTUNES, "-q", "download", str(tid)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            else:
                subprocess.run(
                    [HALFTUNES, "-q", "download", "-b", str(tid)],
                    env=env,
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
                out["download_b_return_ms"].append(1000 * (time.time() - began))
            entry = None
            deadline = time.monotonic() + 30
            while entry is None or entry["bytes_sent"] < 2 * MIB:
                if time.monotonic() > deadline:
                    raise RuntimeError("S5: the transfer never started")
                time.sleep(0.05)
                log_ = [e for e in _admin(api, "/_admin/log") if e["path"].startswith("/previews/")]
                entry = log_[0] if log_ else None
            if mode == "bg":
                out["download_b_first_byte_ms"].append(1000 * (entry["time"] - began))
            t0 = time.time()
            subprocess.run([HALFTUNES, "pause", str(tid)], env=env, capture_output=True)
            for _ in range(100):
                entry = next(
                    e for e in _admin(api, "/_admin/log") if e["path"].startswith("/previews/")
                )
                if entry["ended"]:
                    break
                time.sleep(0.02)
            key = "foreground_ms" if mode == "fg" else "background_ms"
            out[key].append(1000 * (entry["ended"] - t0))
            if mode == "fg":
                proc.wait()
            subprocess.run([HALFTUNES, "cancel", str(tid)], env=env, capture_output=True)
    _admin(api, "/_admin/throttle", {"bps": None})
    results["scenarios"]["S5 control latency"] = {
        k: {"median": statistics.median(v), "min": min(v), "max": max(v), "samples": v}
        for k, v in out.items()
    }


def s6_resume_cost(api: str) -> None:
    size = 50 * MIB
    tid = 1000002
    res = {}
    for how in ("pause", "kill -9"):
        fracs = []
        for _ in range(3):
            state, dl = fresh(WORK / "s6-state"), fresh(WORK / "s6-dl")
            env = ht_env(state, dl, api)
            _admin(api, f"/_admin/track/{tid}", {"size": size})
            _admin(api, "/_admin/throttle", {"bps": 20 * MIB})
            _admin(api, "/_admin/clear", {})
            proc = subprocess.Popen(
                [HALFTUNES, "-q", "download", str(tid)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            part = next(iter([]), None)
            while True:
                parts = list(dl.glob("*.part"))
                if parts and parts[0].stat().st_size >= size // 2:
                    part = parts[0]
                    break
                time.sleep(0.01)
            if how == "pause":
                subprocess.run([HALFTUNES, "pause", str(tid)], env=env, capture_output=True)
            else:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
            _admin(api, "/_admin/throttle", {"bps": None})
            subprocess.run(
                [HALFTUNES, "-q", "resume", str(tid)],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            served = sum(
                e["bytes_sent"]
                for e in _admin(api, "/_admin/log")
                if e["path"].startswith("/previews/")
            )
            fracs.append((served - size) / size)
            assert part is not None
        res[how] = {"refetched_fraction_median": statistics.median(fracs), "samples": fracs}
    results["scenarios"]["S6 resume cost (50 MiB)"] = res


def s8_shaped() -> None:
    """A shaped link in a private network namespace (see bench/s8_shaped.py)."""
    cmd = [
        "unshare",
        "-n",
        sys.executable,
        str(ROOT / "bench" / "s8_shaped.py"),
        str(RUNS),
        str(WORK / "s8"),
    ]
    if not shutil.which("unshare") or not shutil.which("tc"):
        results["skipped"].append("S8: unshare or tc not available")
        return
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["?"])[-1]
        results["skipped"].append(f"S8: no private network namespace here ({reason})")
        log(f"  S8 skipped: {reason}")
        return
    results["scenarios"]["S8 shaped link"] = json.loads(proc.stdout)


def s9_connections(servers: Servers, have: dict) -> None:
    """One file over 8 connections. Capped: the catalog serves each request at S9_CAP bytes/s
    (a CDN's per-connection cap), against aria2c -x 8 -s 8 -k 1M. Uncapped: the loopback
    nginx file of S1, -x 8 against one connection."""
    cap, size = S9_CAP, S9_SIZE
    capped = subprocess.Popen(
        [sys.executable, "-m", "halftunes_cli.catalog", "--port", "0", "--throttle", str(cap)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert capped.stdout is not None
    api = capped.stdout.readline().strip()
    eight = {**os.environ, "HALFTUNES_MAX_CONNECTIONS_PER_HOST": "8"}
    envs = {
        "halftunes -x 8": eight,
        "halftunes -x 8 (durability=crash)": {**eight, "HALFTUNES_DURABILITY": "crash"},
        "halftunes -x 1": eight,
    }

    def ht(url: str, n: int):
        return lambda d: [
            HALFTUNES,
            "--session",
            "ephemeral",
            "-q",
            "download",
            "-x",
            str(n),
            url,
            "-P",
            str(d),
        ]

    def aria(url: str):
        return lambda d: [
            "aria2c",
            "-q",
            "-x8",
            "-s8",
            "-k1M",
            "--allow-overwrite=true",
            "--file-allocation=none",
            "-d",
            str(d),
            "-o",
            "s9.bin",
            url,
        ]

    rows: dict = {}
    try:
        url = f"{api}/files/s9.bin?size={size}&seed=11"
        tools = {
            "halftunes -x 8": ht(url, 8),
            "halftunes -x 8 (durability=crash)": ht(url, 8),
        }
        if have["aria2c"]:
            tools["aria2c -x 8 -s 8 -k 1M"] = aria(url)
        links: dict[str, list[float]] = {name: [] for name in tools}

        def check(d: Path) -> bool:
            # the server's clock: first request in to last byte out (no start-up)
            log_ = [e for e in _admin(api, "/_admin/log") if e["path"] == "/files/s9.bin"]
            links[current[0]].append(
                max(e["ended"] or e["time"] for e in log_) - min(e["time"] for e in log_)
            )
            _admin(api, "/_admin/clear", {})
            return (d / "s9.bin").stat().st_size == size

        current = [""]
        samples: dict[str, list] = {name: [] for name in tools}
        for run in range(RUNS + 1):  # run 0 is the warm-up
            for name, build in tools.items():
                current[0] = name
                d = fresh(WORK / "s9")
                sample = measure(build(d), env=envs.get(name))
                if not check(d):
                    raise RuntimeError(f"{name} produced a wrong result")
                if run > 0:
                    samples[name].append(sample)
                else:
                    links[name].clear()
            log(f"  run {run}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in links.items() if v))
        for name, got in samples.items():
            summary = summarize(got, size)
            summary["of_8_caps"] = summary["mib_per_s"] * MIB / (8 * cap)
            summary["link_seconds"] = statistics.median(links[name])
            rows[f"capped {cap // MIB} MiB/s per connection: {name}"] = summary
    finally:
        capped.terminate()
        capped.wait()
    big = make_big_file(servers, "big.bin", GIB)
    tools = {"halftunes -x 8": ht(big, 8), "halftunes -x 1": ht(big, 1)}
    samples = alternate(
        tools, WORK / "s9", lambda d: (d / "big.bin").stat().st_size == GIB, settle=2.0, envs=envs
    )
    for name, got in samples.items():
        rows[f"loopback, no cap, 1 GiB: {name}"] = summarize(got, GIB)
    results["scenarios"]["S9 one file over 8 connections"] = rows


S9_CAP = 4 * MIB  # bytes per second per connection
S9_SIZE = 128 * MIB


def s10_jobs(have: dict, n: int = 20_000, size: int = 100_000) -> None:
    """A job of n items of `size` bytes on loopback: items/s of the local and Dask engines
    against aria2c -j 16 -i and wget -i, and the local engine's peak RSS at n/10 and n.
    Served by nginx where it is installed (1,000 distinct files, each URL made distinct by its
    query), else by the catalog server."""
    servers = Servers(have["nginx"], MIB, 10)
    if servers.static_url:
        from halftunes_cli.testing.catalog import body_slice

        folder = servers.static / "s10"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(1000):
            (folder / f"j{i}.bin").write_bytes(body_slice(i % 97, 0, size))

        def url(i: int) -> str:
            return f"{servers.static_url}/s10/j{i % 1000}.bin?n={i}"
    else:

        def url(i: int) -> str:
            return f"{servers.api}/files/j{i}.bin?size={size}&seed={i % 97}"

    results["scenarios"].pop("S10 jobs (100 KB items)", None)
    try:
        rows: dict = {}
        for count in (n // 10, n):
            urls = [url(i) for i in range(count)]
            listing = WORK / f"s10-{count}.txt"
            listing.write_text("\n".join(urls) + "\n")
            aria = WORK / f"s10-{count}-aria.txt"
            aria.write_text("".join(f"{u}\n  out=j{i}.bin\n" for i, u in enumerate(urls)))

            def job(engine: str, count: int = count, listing: Path = listing):
                return lambda d: [
                    HALFTUNES,
                    "-q",
                    "job",
                    "run",
                    str(fresh(WORK / "s10-job")),
                    "--input",
                    str(listing),
                    "-P",
                    str(d),
                    "--engine",
                    engine,
                ]

            tools = {
                f"halftunes job --engine local ({count}; {os.cpu_count()} workers)": job("local")
            }
            if count == n:
                tools["halftunes job --engine dask (LocalCluster, 2 processes)"] = job("dask")
                if have["aria2c"]:
                    tools["aria2c -j 16 -i"] = lambda d, aria=aria: [
                        "aria2c",
                        "-q",
                        "-j",
                        "16",
                        "-i",
                        str(aria),
                        "-d",
                        str(d),
                        "--file-allocation=none",
                    ]
                if have["wget"]:
                    tools["wget -i"] = lambda d, listing=listing: [
                        "wget",
                        "-q",
                        "-i",
                        str(listing),
                        "-P",
                        str(d),
                        "-nd",
                    ]

            def check(d: Path, count: int = count) -> bool:
                return sum(1 for p in d.iterdir() if p.is_file()) == count

            samples = alternate(tools, WORK / "s10-out", check, envs=None)
            for name, got in samples.items():
                summary = summarize(got, count * size)
                summary["items_per_s"] = count / summary["wall"]["median"]
                summary["items_per_cpu_s"] = count / summary["cpu"]["median"]
                rows[name] = summary
        rows["served by"] = "nginx" if servers.static_url else "the catalog server"
        results["scenarios"]["S10 jobs (100 KB items)"] = rows
    finally:
        servers.stop()


def s7_memory(servers: Servers) -> None:
    out = {}
    for size in (100 * MIB, GIB):
        url = make_big_file(servers, f"mem-{size}.bin", size)
        rss = []
        for _ in range(3):
            d = fresh(WORK / "s7")
            rss.append(
                measure([HALFTUNES, "--session", "ephemeral", "-q", "download", url, "-P", str(d)])[
                    "rss_mib"
                ]
            )
            shutil.rmtree(d)
            time.sleep(1)
        out[f"{size // MIB} MiB"] = {"peak_rss_mib_median": statistics.median(rss), "samples": rss}
    results["scenarios"]["S7 memory"] = out


# -- report --------------------------------------------------------------------------------------
def fmt_range(d: dict, key: str, scale: float = 1.0, digits: int = 2) -> str:
    v = d[key]
    return (
        f"{v['median'] * scale:.{digits}f} ({v['min'] * scale:.{digits}f}–"
        f"{v['max'] * scale:.{digits}f})"
    )


def report() -> str:
    sc = results["scenarios"]
    lines = [
        "# halftunes benchmarks",
        "",
        f"{results['date']}, {results['machine']}; medians of {RUNS} runs after a warm-up "
        f"(min–max in brackets). Produced by `make bench`.",
        "",
    ]
    for title in ("S1 one 1 GiB file", "S2 200 previews of 1 MiB"):
        if title not in sc:
            continue
        rows = sc[title]
        ht = rows["halftunes"]
        lines += ["(halftunes/tool compares halftunes' default, durability=power-cut)", ""]
        lines += [
            f"## {title}",
            "",
            "| tool | wall s | CPU s | peak RSS MiB | MiB/s | halftunes/tool (wall) |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in rows.items():
            ratio = ht["wall"]["median"] / r["wall"]["median"]
            lines.append(
                f"| {name} | {fmt_range(r, 'wall')} | {fmt_range(r, 'cpu')} | "
                f"{fmt_range(r, 'rss_mib', digits=1)} | {r['mib_per_s']:.0f} | "
                f"{ratio:.2f} |"
            )
        lines.append("")
    if "S3 scaling" in sc:
        s = sc["S3 scaling"]
        lines += ["## S3 scaling", "", "| measure | value |", "|---|---|"]
        for n, v in s["per_file_seconds"].items():
            lines.append(f"| per file, batch of {n} | {1000 * v:.1f} ms |")
        lines += [
            f"| ratio per-file 1000 / 10 | {s['ratio_1000_vs_10']:.2f} |",
            f"| slope (extra time per extra file, 100 → 1000) | {s['slope_ms_per_file']:.2f} ms |",
            f"| `list --json` with 10,000 records | {s['list_json_10k_seconds']:.3f} s |",
            f"| one `download` with 10,000 records | {s['single_download_10k_seconds']:.3f} s |",
            f"| one checkpoint with 10,000 records | {s['checkpoint_10k_ms']:.3f} ms |",
            "",
        ]
    if "S4 start-up" in sc:
        s = sc["S4 start-up"]
        base = s["python -c 'import typer'"]["wall"]["median"]
        lines += ["## S4 start-up", "", "| command | wall ms | × import typer |", "|---|---|---|"]
        for name, r in s.items():
            lines.append(
                f"| `{name}` | {fmt_range(r, 'wall', 1000, 0)} | {r['wall']['median'] / base:.2f} |"
            )
        lines.append("")
    if "S5 control latency" in sc:
        s = sc["S5 control latency"]
        lines += ["## S5 control latency", "", "| measure | median ms (min–max) |", "|---|---|"]
        names = {
            "foreground_ms": "`pause` → bytes stop, foreground transfer",
            "background_ms": "`pause` → bytes stop, background transfer",
            "download_b_return_ms": "`download -b` returns",
            "download_b_first_byte_ms": "`download -b` → first byte served",
        }
        for k, v in s.items():
            lines.append(f"| {names[k]} | {v['median']:.0f} ({v['min']:.0f}–{v['max']:.0f}) |")
        lines.append("")
    if "S6 resume cost (50 MiB)" in sc:
        s = sc["S6 resume cost (50 MiB)"]
        lines += [
            "## S6 resume cost",
            "",
            "| interruption at 50% of 50 MiB | bytes fetched twice |",
            "|---|---|",
        ]
        for k, v in s.items():
            lines.append(f"| {k} | {100 * v['refetched_fraction_median']:.2f}% of the file |")
        lines.append("")
    if "S7 memory" in sc:
        lines += ["## S7 memory", "", "| download | peak RSS MiB |", "|---|---|"]
        for k, v in sc["S7 memory"].items():
            lines.append(f"| {k} | {v['peak_rss_mib_median']:.1f} |")
        lines.append("")
    if "S8 shaped link" in sc:
        s8 = sc["S8 shaped link"]
        lines += [
            "## S8 shaped link",
            "",
            f"Loopback in a private network namespace: {s8['link']}.",
            "",
        ]
        for label in ("300 previews of 1 MiB", "one 200 MiB file"):
            rows = s8.get(label, {})
            lines += [
                f"### {label}",
                "",
                "| tool | wall s | CPU s | connections | MiB/s "
                "(whole command) | MiB/s on the link (server's clock) |",
                "|---|---|---|---|---|---|",
            ]
            for name, r in rows.items():
                link = r.get("link_mib_s")
                lines.append(
                    f"| {name} | {fmt_range(r, 'wall')} | {fmt_range(r, 'cpu')} | "
                    f"{r['connections']} | {r['mib_per_s']:.1f} | "
                    f"{'-' if link is None else f'{link:.1f}'} |"
                )
            lines.append("")
        lines += [
            "The link carries at most 400 Mbit/s = 47.7 MiB/s of TCP payload and less "
            "(framing); the last column times bodies from the first byte the server sent "
            "to the last, without the tools' start-up.",
            "",
        ]
    if "S9 one file over 8 connections" in sc:
        lines += [
            "## S9 one file over 8 connections",
            "",
            "| tool | wall s | CPU s | peak RSS MiB | MiB/s | of 8 × the cap | server's clock s |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r in sc["S9 one file over 8 connections"].items():
            share, link = r.get("of_8_caps"), r.get("link_seconds")
            lines.append(
                f"| {name} | {fmt_range(r, 'wall')} | {fmt_range(r, 'cpu')} | "
                f"{fmt_range(r, 'rss_mib', digits=1)} | {r['mib_per_s']:.0f} | "
                f"{'-' if share is None else f'{100 * share:.0f}%'} | "
                f"{'-' if link is None else f'{link:.2f}'} |"
            )
        lines += [
            "",
            "The server's clock runs from the first request in to the last byte out: the "
            "transfer without the tool's start-up (halftunes: about 0.25 s of Python start-up "
            "and imports before its first request).",
            "",
        ]
    if "S10 jobs (100 KB items)" in sc:
        lines += [
            "## S10 jobs (items of 100 KB)",
            "",
            "| tool | wall s | items/s | items per CPU s | CPU s | peak RSS MiB |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in sc["S10 jobs (100 KB items)"].items():
            if not isinstance(r, dict):
                continue
            lines.append(
                f"| {name} | {fmt_range(r, 'wall')} | {r['items_per_s']:.0f} | "
                f"{r.get('items_per_cpu_s', 0):.0f} | "
                f"{fmt_range(r, 'cpu')} | {fmt_range(r, 'rss_mib', digits=1)} |"
            )
        served = sc["S10 jobs (100 KB items)"].get("served by", "the catalog server")
        lines += ["", f"Served by {served}.", ""]
    if results["skipped"]:
        lines += ["Skipped: " + "; ".join(results["skipped"]), ""]
    return "\n".join(lines)


def save(partial: bool) -> None:
    """Write results.json; a partial run updates its scenarios and keeps the others."""
    stored = ROOT / "bench" / "results.json"
    if partial and stored.exists():
        previous = json.loads(stored.read_text())
        results["scenarios"] = {**previous.get("scenarios", {}), **results["scenarios"]}
    stored.write_text(json.dumps(results, indent=1))


def main() -> int:
    os.environ.setdefault("NO_COLOR", "1")
    results["date"] = time.strftime("%Y-%m-%d")
    results["machine"] = (
        f"{os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}, Linux {platform.release()}"
    )
    only = set(sys.argv[1:])  # e.g. `python bench/bench.py S4 S5`
    have = ensure_tools()
    began = time.monotonic()
    if not only or "S4" in only:
        log("S4 start-up")
        s4_startup()
    control = Servers(False, MIB, 300)  # serves previews itself, so it sees bytes stop
    try:
        if not only or "S5" in only:
            log("S5 control latency")
            s5_control(control.api)
        if not only or "S6" in only:
            log("S6 resume cost")
            s6_resume_cost(control.api)
    finally:
        control.stop()
    servers = Servers(have["nginx"], MIB, 300)
    try:
        if not only or "S2" in only:
            log("S2 batch of 200")
            s2_batch(servers, have)
        if not only or "S1" in only:
            log("S1 one large file")
            s1_large(servers, have)
        if not only or "S7" in only:
            log("S7 memory")
            s7_memory(servers)
        if not only or "S9" in only:
            log("S9 one file over 8 connections")
            s9_connections(servers, have)
    finally:
        servers.stop()
    if not only or "S8" in only:
        log("S8 shaped link")
        s8_shaped()
    if not only or "S10" in only:
        log("S10 jobs")
        s10_jobs(have)
    if not only or "S3" in only:
        log("S3 scaling")
        small = Servers(False, 16 * 1024, 1100)
        try:
            s3_scaling(small)
        finally:
            small.stop()
    results["elapsed_seconds"] = time.monotonic() - began
    save(bool(only))
    text = report()
    (ROOT / "bench" / "RESULTS.md").write_text(text + "\n")
    print(text)
    shutil.rmtree(WORK, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
