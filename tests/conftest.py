"""Shared fixtures: a real catalog server on 127.0.0.1:0, isolated dirs, the real CLI."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from halftunes_cli.ranges import OVERLAP_BYTES
from halftunes_cli.testing.catalog import CatalogServer

HALFTUNES = str(Path(sys.executable).with_name("halftunes"))


def pytest_addoption(parser):
    parser.addoption("--chaos-rounds", type=int, default=16, help="rounds for test_chaos")
    parser.addoption("--storm-seconds", type=int, default=15, help="length of the storm")
    parser.addoption(
        "--odd-examples",
        type=int,
        default=30,
        help="examples of odd numbers in headers and API fields (test_chaos)",
    )


def _become_subreaper() -> None:
    # Detached workers re-parent to us instead of PID 1 (which does not reap here),
    # so each test can reap exactly the processes it made.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


_become_subreaper()

# Started as a shell's background job, this process (and every command it runs) would ignore
# Ctrl-C: a Python handler here is reset to the default in each child at exec, so the tests
# of Ctrl-C mean what they say however the suite was started.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class CommandTimedOut(BaseException):
    """An in-process command outlived its timeout (a BaseException: the app's catch-all, which
    turns exceptions into "internal error", must let it through)."""


@contextlib.contextmanager
def deadline(seconds: float, args: tuple[str, ...]):
    """Stop what runs in this (main) thread after `seconds`, by SIGALRM. pytest-timeout's own
    alarm, when it would ring sooner, is left to ring; otherwise it is set again after."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous_delay, _ = signal.getitimer(signal.ITIMER_REAL)
    if previous_delay and previous_delay <= seconds:
        yield  # the test's own timeout comes first
        return

    def expired(signum, frame):
        raise CommandTimedOut(f"halftunes {' '.join(args)} ran longer than {seconds:g} s")

    previous_handler = signal.signal(signal.SIGALRM, expired)
    started = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_delay:
            left = previous_delay - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))


class Env:
    """One test's world: its dirs, its environment, and helpers to run the CLI."""

    def __init__(self, tmp: Path, server: CatalogServer):
        self.tmp = tmp
        self.server = server
        self.state_dir = tmp / "state"
        self.download_dir = tmp / "downloads"
        self.home = tmp / "home"
        self.home.mkdir()
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "XDG_STATE_HOME": str(self.home / ".state"),
            "XDG_CACHE_HOME": str(self.home / ".cache"),
            "HALFTUNES_API_URL": server.url,
            "HALFTUNES_STATE_DIR": str(self.state_dir),
            "HALFTUNES_DOWNLOAD_DIR": str(self.download_dir),
            "PYTHONUNBUFFERED": "1",
            "LANG": "C.UTF-8",
        }
        self.procs: list[subprocess.Popen] = []

    def run(
        self, *args: str, input: str | None = None, timeout: float = 60, env: dict | None = None
    ) -> subprocess.CompletedProcess:
        """The CLI in this process (Typer's CliRunner): parsing, rendering and exit codes.

        Unexpected exceptions are re-raised, so a traceback can never pass for an error line.
        A command that takes longer than `timeout` seconds is stopped (CommandTimedOut).
        Use `run_process` where a process matters (signals, kill -9, races, the console
        script itself)."""
        from typer.testing import CliRunner

        from halftunes_cli.cli import app

        with deadline(timeout, args):
            result = CliRunner().invoke(
                app,
                list(args),
                input=input,
                catch_exceptions=False,
                env={**self.env, **(env or {})},
                prog_name="halftunes",
            )
        return subprocess.CompletedProcess(
            [HALFTUNES, *args], result.exit_code, result.stdout, result.stderr
        )

    def run_process(
        self,
        *args: str,
        input: str | None = None,
        timeout: float = 60,
        env: dict | None = None,
        **kw,
    ) -> subprocess.CompletedProcess:
        """The installed `halftunes` command in its own process (kw: cwd, umask, ...)."""
        return subprocess.run(
            [HALFTUNES, *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**self.env, **(env or {})},
            **kw,
        )

    def json(self, *args: str, **kw) -> object:
        result = self.run(*args, "--json", **kw)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def spawn(self, *args: str, env: dict | None = None, **kw) -> subprocess.Popen:
        proc = subprocess.Popen(
            [HALFTUNES, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**self.env, **(env or {})},
            **kw,
        )
        self.procs.append(proc)
        return proc

    def records(self) -> dict[str, dict]:
        return {r["id"]: r for r in self.json("list")}

    def record(self, rid: str) -> dict | None:
        return self.records().get(str(rid))

    def wait_for(self, predicate, timeout: float = 20, interval: float = 0.02, what: str = ""):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out waiting for {what or predicate}")

    @staticmethod
    def resume_range(offset: int) -> str:
        """The Range a resume with `offset` bytes in hand sends: 64 KiB of overlap before it."""
        return f"bytes={max(0, offset - OVERLAP_BYTES)}-"

    def part_size(self, rid: str | int) -> int:
        """Bytes in a record's partial right now (0 when there is none)."""
        row = self.state_record(str(rid))
        try:
            return os.path.getsize(row["part_path"]) if row else 0
        except OSError:
            return 0

    def state_record(self, rid: str) -> dict | None:
        """Read the record straight from SQLite (no CLI, no reconcile)."""
        import sqlite3

        db = self.state_dir / "downloads.db"
        if not db.exists():
            return None
        conn = sqlite3.connect(db, timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            row = conn.execute("SELECT * FROM downloads WHERE id = ?", (str(rid),)).fetchone()
            return dict(row) if row else None
        finally:
            conn.close()

    # -- server helpers -------------------------------------------------------------------
    def track(self, tid: int, size: int | None = None, version: int | None = None) -> dict:
        st = self.server.state
        if size is not None:
            st.sizes[tid] = size
        if version is not None:
            st.versions[tid] = version
        return st.tracks[tid]

    def fault(self, **fault) -> None:
        with self.server.state.lock:
            self.server.state.faults.append(fault)

    def preview_requests(self, tid: int) -> list[dict]:
        return self.server.state.requests_for(f"/previews/{tid}/")

    def expected_sha(self, tid: int) -> str:
        return self.server.state.sha256_of(tid)

    def worker_pid(self) -> int | None:
        try:
            return int((self.state_dir / "worker.pid").read_text())
        except (OSError, ValueError):
            return None

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        pid = self.worker_pid()
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        reap_children()


class LockWatch:
    """Tells when the holder of a lock file has let go (or died), even after the file itself
    was deleted: it keeps a descriptor of the same file open and tries the lock on it."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_RDONLY)

    def wait_free(self, timeout: float = 20.0) -> None:
        import fcntl

        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise AssertionError("the lock's holder never let go") from None
                    time.sleep(0.02)
        finally:
            os.close(self.fd)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return "?"


class WriterAudit:
    """Watches, from outside, which processes hold a `.part` file open for writing: every few
    milliseconds it reads /proc/<pid>/fd and fdinfo of every process. Two processes with one
    partial (one inode) open for writing at the same moment is a violation: a partial has
    one writer."""

    def __init__(self, interval_seconds: float = 0.003) -> None:
        import threading

        self.interval_seconds = interval_seconds
        self.violations: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="writer-audit")

    def start(self) -> WriterAudit:
        self._thread.start()
        return self

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(timeout=10)
        assert self.samples > 0
        return self.violations

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            self.samples += 1
            for inode, pids in self.writers().items():
                if len(pids) > 1:
                    self.violations.append(
                        f"inode {inode}: written by "
                        + "; ".join(f"{pid} {_cmdline(pid)}" for pid in sorted(pids))
                    )

    @staticmethod
    def writers() -> dict[tuple[int, int], set[int]]:
        """(device, inode) -> the processes of this test run (descendants of this process)
        that hold that partial open for writing right now. A file deleted and another made
        with the same inode between two reads would look like one: a pair is reported only
        when both descriptors still name the same path and inode when read again."""
        candidates: dict[tuple[int, int], dict[int, tuple[str, str]]] = {}
        for pid in _descendants(os.getpid()):
            fd_dir = f"/proc/{pid}/fd"
            try:
                fds = os.listdir(fd_dir)
            except OSError:
                continue
            for fd in fds:
                link = f"{fd_dir}/{fd}"
                try:
                    target = os.readlink(link)
                    if ".part" not in target:
                        continue
                    with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                        flags = int(info.read().split("flags:")[1].split()[0], 8)
                    st = os.stat(link)
                except (OSError, IndexError, ValueError):
                    continue
                if flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR):
                    candidates.setdefault((st.st_dev, st.st_ino), {})[pid] = (link, target)
        found: dict[tuple[int, int], set[int]] = {}
        for inode, holders in candidates.items():
            if len(holders) < 2:
                found[inode] = set(holders)
                continue
            confirmed = set()
            for pid, (link, target) in holders.items():
                try:
                    st = os.stat(link)
                    if os.readlink(link) == target and (st.st_dev, st.st_ino) == inode:
                        confirmed.add(pid)
                except OSError:
                    pass
            if len({holders[p][1] for p in confirmed}) <= 1:
                found[inode] = confirmed
        return found


def _descendants(root: int) -> set[int]:
    """Every process below `root` (orphaned workers are re-parented to us: we reap them)."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    parents[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    out, stack = {root}, [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in out:
                out.add(child)
                stack.append(child)
    return out


def corrupt_state(state_dir: Path, kind: str) -> None:
    """Spoil the state file: garbage, empty, a directory, or from a future version."""
    import sqlite3

    db = state_dir / "downloads.db"
    for side in ("-wal", "-shm"):
        Path(str(db) + side).unlink(missing_ok=True)
    if kind == "garbage":
        db.write_bytes(b"\x00this is not sqlite" * 500)
    elif kind == "empty":
        db.write_bytes(b"")
    elif kind == "directory":
        db.unlink()
        db.mkdir()
    elif kind == "future":
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA user_version = 7")
        conn.commit()
        conn.close()


def reap_children(timeout: float = 5.0) -> None:
    """Reap every exited child (orphaned workers re-parented to us), waiting up to `timeout`
    for those still running. (multiprocessing's resource tracker, started in this process
    by an in-process `job run`, lives as long as the process: it is not waited for.)"""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if not _children_to_wait_for() or time.monotonic() > deadline:
                return
            time.sleep(0.02)


def _children_to_wait_for() -> set[int]:
    pids: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            pids |= {int(x) for x in (task / "children").read_text().split()}
    out = set()
    for pid in pids:
        try:
            cmdline = (Path("/proc") / str(pid) / "cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" not in cmdline:
            out.add(pid)
    return out


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch, tmp_path):
    """No test sees the developer's halftunes settings, colours, home or working directory."""
    for name in list(os.environ):
        # (requests reads proxy variables in both spellings: a machine's `no_proxy` would
        # otherwise decide where a test's requests go)
        if (
            name.startswith("HALFTUNES_")
            or name in ("NO_COLOR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
            or name.lower().endswith("_proxy")
        ):
            monkeypatch.delenv(name)
    home = tmp_path / "isolated-home"
    monkeypatch.setenv("HOME", str(home))
    for var, sub in (
        ("XDG_CONFIG_HOME", ".config"),
        ("XDG_STATE_HOME", ".state"),
        ("XDG_CACHE_HOME", ".cache"),
        ("XDG_MUSIC_DIR", "Music"),
    ):
        monkeypatch.setenv(var, str(home / sub))
    # and works in a folder of its own: a relative -o never lands in the repository
    work = tmp_path / "isolated-cwd"
    work.mkdir()
    monkeypatch.chdir(work)


@pytest.fixture
def server():
    srv = CatalogServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def env(tmp_path, server):
    e = Env(tmp_path, server)
    yield e
    e.cleanup()


def run_in_pty(
    env: Env,
    args: list[str],
    columns: int,
    rows: int = 200,
    extra: dict | None = None,
    timeout: float = 60,
) -> str:
    """Run the installed command with stdout and stderr on a terminal of the given size;
    returns everything it wrote (escape codes included)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    proc = subprocess.Popen(
        [HALFTUNES, *args],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env={**env.env, "TERM": "xterm", **(extra or {})},
    )
    os.close(slave)
    output = read_terminal(master, timeout)
    proc.wait(timeout=10)
    env.last_pty_code = proc.returncode
    return output


def read_terminal(master: int, timeout: float = 60) -> str:
    """Everything written to a pty until its last writer closes it; closes `master`."""
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return b"".join(chunks).decode("utf-8", "replace")


def visible_lines(output: str, columns: int = 200, rows: int = 200) -> list[str]:
    """The screen a person sees after `output` (a VT100 emulator runs the escape codes and
    carriage-return redraws), trailing blanks stripped."""
    import pyte

    screen = pyte.Screen(columns, rows)
    pyte.Stream(screen).feed(output)
    lines = [line.rstrip() for line in screen.display]
    while lines and not lines[-1]:
        lines.pop()
    return lines


class Terminal:
    """A command on a real terminal of its own (a pty that is its controlling terminal), as
    a person runs it: keys go in (Ctrl-C is b"\\x03": the terminal sends SIGINT and echoes
    ^C), and `screen()` is what the person sees (pyte runs the escape codes)."""

    def __init__(
        self,
        env: Env,
        args: list[str],
        columns: int = 80,
        rows: int = 40,
        extra: dict | None = None,
        command: list[str] | None = None,
    ):
        import fcntl
        import pty
        import struct
        import termios
        import threading

        self.columns, self.rows = columns, rows
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))

        def own_terminal() -> None:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            command or [HALFTUNES, *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**env.env, "TERM": "xterm", **(extra or {})},
            preexec_fn=own_terminal,
        )
        os.close(slave)
        env.procs.append(self.proc)
        self._chunks: list[bytes] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self._chunks.append(data)

    @property
    def output(self) -> str:
        with self._lock:
            return b"".join(self._chunks).decode("utf-8", "replace")

    def send(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def wait_for_text(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never showed: {self.output[-2000:]!r}")
            time.sleep(0.02)

    def wait(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        os.close(self.master)
        return code

    def screen(self) -> list[str]:
        return visible_lines(self.output, self.columns, self.rows)


@pytest.fixture
def s3():
    """An S3 server (moto) on 127.0.0.1 for this test, and the environment that reaches it."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    from moto.s3.models import s3_backends

    s3_backends.reset()  # (moto keeps its buckets per process, not per server)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "FSSPEC_S3_ENDPOINT_URL": f"http://{host}:{port}",
        }
    finally:
        server.stop()
