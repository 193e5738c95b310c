"""The Task protocol: one contract for local and background download tasks, and a stop
request that ends every kind of task the same way, also during a retry back-off."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
from conftest import reap_children

from halftunes_cli import ResumeData, Session, SessionConfiguration
from halftunes_cli.errors import HalftunesError
from halftunes_cli.tasks import TaskState
from halftunes_cli.testing.catalog import body_slice


def _session(kind: str, env) -> Session:
    dirs = {"state_dir": env.state_dir, "download_dir": env.download_dir}
    if kind == "background":
        return Session(SessionConfiguration.background("contract", **dirs))
    return Session(SessionConfiguration.default(**dirs))


@pytest.fixture(params=["default", "background"])
def kind(request, env):
    yield request.param
    if request.param == "background":
        env.cleanup()  # the worker this test started, reaped
        reap_children()


def test_task_contract_download_pause_resume(env, kind):
    """Both executors: suspended until resume(); pause hands back resume data at a
    checkpoint; a new task from it completes with the right bytes; completion gets
    (location, response, error)."""
    url = f"{env.server.url}/files/contract.bin?size=2000000&seed=11"
    expected = hashlib.sha256(body_slice(11, 0, 2_000_000)).hexdigest()
    session = _session(kind, env)
    got = []
    task = session.download_task(url, completion=lambda loc, resp, err: got.append((loc, err)))
    assert task.state is TaskState.SUSPENDED and not env.server.state.log
    env.server.state.throttle_bps = 500_000
    task.resume()
    assert task.state is TaskState.RUNNING
    env.wait_for(
        lambda: (
            (env.download_dir / "contract.bin.part").exists()
            and (env.download_dir / "contract.bin.part").stat().st_size > 0
        )
    )
    data = task.cancel_producing_resume_data()
    assert isinstance(data, ResumeData) and data.offset > 0
    assert task.state is TaskState.PAUSED
    assert ResumeData.from_bytes(data.to_bytes()) == data
    env.server.state.throttle_bps = None
    again = session.download_task_with_resume_data(
        data, completion=lambda loc, resp, err: got.append((loc, err))
    )
    again.resume()
    assert again.wait(30)
    assert again.state is TaskState.COMPLETED and again.error is None
    assert again.location == env.download_dir / "contract.bin"
    assert hashlib.sha256(again.location.read_bytes()).hexdigest() == expected
    assert got[-1] == (env.download_dir / "contract.bin", None)
    last = env.server.state.requests_for("/files/contract.bin")[-1]
    assert last["range"] == env.resume_range(data.offset)


def test_task_contract_failure_is_an_error_object(env, kind):
    session = _session(kind, env)
    task = session.download_task(f"{env.server.url}/files/missing.bin")
    env.fault(path="/files/missing.bin", kind="status", status=404)
    task.resume()
    assert task.wait(30)
    assert task.state is TaskState.FAILED
    assert isinstance(task.error, HalftunesError) and "404" in str(task.error)


def _back_off_forever(env, path):
    env.fault(path=path, kind="status", status=503, retry_after=60, times=-1)


@pytest.mark.parametrize("task_kind", ["data", "upload", "download"])
def test_cancel_during_back_off_ends_cancelled(env, tmp_path, task_kind):
    session = Session(SessionConfiguration.ephemeral(download_dir=env.download_dir))
    if task_kind == "data":
        _back_off_forever(env, "/lookup")
        task = session.data_task(f"{env.server.url}/lookup?id=1000001")
        path = "/lookup"
    elif task_kind == "upload":
        _back_off_forever(env, "/upload/")
        source = tmp_path / "up.bin"
        source.write_bytes(b"u" * 10_000)
        task = session.upload_task(f"{env.server.url}/upload/up.bin", source)
        path = "/upload/"
    else:
        _back_off_forever(env, "/files/")
        task = session.download_task(f"{env.server.url}/files/d.bin?size=1000")
        path = "/files/"
    task.resume()
    env.wait_for(lambda: env.server.state.requests_for(path), what="the first 503")
    task.cancel()
    assert task.wait(10), "a stop request must cut the 60 s back-off short"
    assert task.state is TaskState.CANCELLED
    assert len(env.server.state.requests_for(path)) == 1


def test_a_bug_is_reported_as_a_bug_not_a_network_error(env, monkeypatch):
    def broken_send(*args, **kwargs):
        raise TypeError("transport bug")  # a bug of halftunes' own, not the network's

    monkeypatch.setattr("halftunes_cli.transport.HttpClient.send", broken_send)
    session = Session(SessionConfiguration.ephemeral())
    task = session.data_task(f"{env.server.url}/lookup?id=1000001")
    task.run()
    assert task.state is TaskState.FAILED
    assert "internal error: TypeError: transport bug" in str(task.error)
    assert isinstance(task.error.__cause__, TypeError)


def test_library_background_session_honours_the_environment(env):
    """SessionConfiguration.background() takes HALFTUNES_STATE_DIR like the CLI does."""
    code = f"""
from halftunes_cli import Session, SessionConfiguration
task = Session(SessionConfiguration.background("env")).download_task(
    {env.server.url + "/files/e.bin?size=1000&seed=2"!r})
task.resume()
assert task.wait(30), "not done"
print(task.state)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env.env, timeout=60
    )
    reap_children()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "completed"
    assert [r["status"] for r in env.json("list")] == ["completed"]


def test_a_background_task_cancelled_elsewhere_cancels_quietly(env):
    session = _session("background", env)
    env.server.state.throttle_bps = 200_000
    task = session.download_task(f"{env.server.url}/files/slow.bin?size=2000000&seed=9")
    task.resume()
    env.wait_for(lambda: (env.state_record(task.record_id) or {}).get("status") == "running")
    assert env.run("cancel", task.record_id).returncode == 0
    task.cancel()  # the record is gone already: nothing to stop, no error
    assert task.state is TaskState.CANCELLED and task.record is None
    env.server.state.throttle_bps = None
    env.cleanup()
    reap_children()
