"""The library API: tasks, delegates, completion handlers, protocols, and the README examples."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from halftunes_cli import Session, SessionConfiguration
from halftunes_cli.errors import AuthenticationRequired, InsecureURLError
from halftunes_cli.tasks import IllegalTransition, TaskState

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_examples() -> list[str]:
    text = README.read_text()
    section = text.split("### Runnable examples", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.mark.parametrize("index", range(len(readme_examples())))
def test_readme_example_runs(index, tmp_path):
    code = readme_examples()[index]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    if "background" in code:
        from conftest import reap_children

        reap_children(timeout=5)


def make_session(tmp_path, delegate=None, **kw):
    return Session(
        SessionConfiguration.ephemeral(
            download_dir=tmp_path, retries=1, backoff_base_seconds=0.01, **kw
        ),
        delegate=delegate,
    )


class Recorder:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        if not name.startswith("on_"):
            raise AttributeError(name)
        return lambda *args: self.calls.append((name, args))


def test_data_task_calls_completion_and_delegate(server, tmp_path):
    delegate = Recorder()
    got = []
    session = make_session(tmp_path, delegate)
    task = session.data_task(
        server.url + "/lookup?id=1000001", completion=lambda d, r, e: got.append((d, r, e))
    )
    assert task.state is TaskState.SUSPENDED and not server.state.log  # starts suspended
    task.resume()
    assert task.wait(10)
    data, response, error = got[0]
    assert error is None and response.status_code == 200 and b"Better Together" in data
    names = [c[0] for c in delegate.calls]
    assert names == ["on_data_received", "on_complete"]
    assert delegate.calls[-1][1] == (task, None)


def test_task_lifecycle_is_enforced(server, tmp_path):
    task = make_session(tmp_path).data_task(server.url + "/lookup?id=1")
    task.run()
    assert task.state is TaskState.COMPLETED
    with pytest.raises(IllegalTransition):
        task.resume()


def test_download_delegate_sequence(server, tmp_path):
    delegate = Recorder()
    task = make_session(tmp_path, delegate).download_task(server.url + "/files/a.bin?size=2500000")
    task.run()
    names = [c[0] for c in delegate.calls]
    assert names[-2:] == ["on_finished_downloading", "on_complete"]
    written = [c[1] for c in delegate.calls if c[0] == "on_data_written"]
    assert sum(w[1] for w in written) == 2_500_000
    assert written[-1][2:] == (2_500_000, 2_500_000)
    assert delegate.calls[-2][1] == (task, tmp_path / "a.bin")


def test_plain_http_to_a_remote_host_is_refused(tmp_path):
    with pytest.raises(InsecureURLError):
        make_session(tmp_path).download_task("http://example.com/a.mp3")


def test_redirect_to_insecure_http_is_refused(tmp_path):
    import responses

    with responses.RequestsMock() as mock:
        mock.get("https://example.com/a", status=302, headers={"Location": "http://example.com/b"})
        task = make_session(tmp_path).data_task("https://example.com/a")
        task.run()
    assert isinstance(task.error, InsecureURLError)


def test_file_url_download_with_resume(tmp_path):
    source = tmp_path / "src" / "song.m4a"
    source.parent.mkdir()
    source.write_bytes(bytes(range(256)) * 4000)
    out = tmp_path / "out"
    session = make_session(out)
    dest = out / "song.m4a"
    part = Path(str(dest) + ".part")
    out.mkdir()
    part.write_bytes(source.read_bytes()[:200_000])
    from halftunes_cli.tasks import ResumeData

    response = session.open("GET", source.as_uri(), {})  # learn the validator
    etag = response.headers["ETag"]
    response.close()
    resumed = session.download_task_with_resume_data(
        ResumeData(source.as_uri(), str(dest), str(part), 200_000, len(source.read_bytes()), etag)
    )
    resumed.run()
    assert resumed.state is TaskState.COMPLETED, resumed.error
    assert dest.read_bytes() == source.read_bytes()
    # the missing bytes, and the 64 KiB before them, compared with the partial first
    assert resumed.bytes_fetched == len(source.read_bytes()) - 200_000 + 65536


def test_file_url_download_from_the_cli(env, tmp_path):
    source = tmp_path / "my song.mp3"
    source.write_bytes(b"x" * 100_000)
    result = env.run("download", source.as_uri())
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).read_bytes() == source.read_bytes()


def test_401_answered_by_the_delegate(server, tmp_path):
    class Answer:
        def on_challenge(self, task, response):
            assert response.status_code == 401
            return ("user", "secret")

    task = make_session(tmp_path, Answer()).download_task(server.url + "/auth/file.bin")
    task.run()
    assert task.state is TaskState.COMPLETED
    assert task.location.stat().st_size == 10_000
    auth = [e["authorization"] for e in server.state.requests_for("/auth/")]
    assert auth == [False, True]


def test_401_without_credentials_is_clear(server, tmp_path):
    task = make_session(tmp_path).download_task(server.url + "/auth/file.bin")
    task.run()
    assert isinstance(task.error, AuthenticationRequired)
    assert "authentication required" in str(task.error)


def test_netrc_is_used_by_the_default_session(env, tmp_path):
    (env.home / ".netrc").write_text("machine 127.0.0.1 login user password secret\n")
    (env.home / ".netrc").chmod(0o600)
    result = env.run("download", f"{env.server.url}/auth/file.bin")
    assert result.returncode == 0, result.stderr
    state_text = b"".join(p.read_bytes() for p in env.state_dir.rglob("*") if p.is_file())
    assert b"secret" not in state_text  # credentials never land in the state
    result = env.run(
        "--session",
        "ephemeral",
        "download",
        f"{env.server.url}/auth/file.bin",
        "--force",
        "-P",
        str(tmp_path / "eph"),
    )
    assert result.returncode == 1 and "authentication required" in result.stderr


def test_protocol_classes_mount_a_custom_scheme(tmp_path):
    from requests.adapters import BaseAdapter
    from requests.models import Response

    class MemoryAdapter(BaseAdapter):
        def send(self, request, **kwargs):
            response = Response()
            response.status_code = 200
            response.url = request.url
            response.request = request
            import io

            from urllib3 import HTTPResponse

            body = b"from memory: " + request.url.encode()
            response.raw = HTTPResponse(body=io.BytesIO(body), preload_content=False)
            return response

        def close(self):
            pass

    config = SessionConfiguration.ephemeral(protocol_classes={"memory://": MemoryAdapter})
    task = Session(config).data_task("memory://song")
    task.run()
    assert task.error is None and task.data == b"from memory: memory://song"


def test_a_closed_session_leaves_no_connection_behind(tmp_path):
    # Each request's handle knows its sockets (to cut them on a stop); a socket knows its
    # handle only weakly. A worker that runs shard after shard must not keep every
    # connection it ever opened.
    code = """
import gc
from halftunes_cli import Session, SessionConfiguration
from halftunes_cli import transport
from halftunes_cli.testing.catalog import CatalogServer

server = CatalogServer().start()
for round in range(5):
    session = Session(SessionConfiguration.ephemeral(download_dir=r"DOWNLOAD_DIR"))
    tasks = [session.download_task(server.url + f"/files/c{round}-{i}.bin?size=2000")
             for i in range(4)]
    for task in tasks:
        task.resume()
    for task in tasks:
        task.wait()
        assert task.error is None, task.error
    session.invalidate_and_cancel()
    del session, tasks, task
gc.collect()
print(len(transport._owners))  # (20 before: every connection, with its request's handle)
server.stop()
""".replace("DOWNLOAD_DIR", str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0"], result.stdout
