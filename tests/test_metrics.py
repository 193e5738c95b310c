"""Task metrics (URLSessionTaskMetrics): the phases of each request, fresh and reused
connections, TLS against a private CA, redirects and retries, the delegate, the record, and
`download -w/--write-out`."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest
from conftest import sha256_file

from halftunes_cli import Session, SessionConfiguration
from halftunes_cli.testing.catalog import CatalogServer

T1, T2 = 1000001, 1000002
PHASES = (
    "fetch_start",
    "domain_lookup_start",
    "domain_lookup_end",
    "connect_start",
    "secure_connection_start",
    "secure_connection_end",
    "connect_end",
    "request_start",
    "request_end",
    "response_start",
    "response_end",
)


def phases(transaction) -> list[float]:
    """The phases that happened, in the order they must have happened."""
    return [getattr(transaction, p) for p in PHASES if getattr(transaction, p) is not None]


class Heard:
    def __init__(self):
        self.calls: list[tuple[str, object]] = []

    def did_finish_collecting_metrics(self, task, metrics):
        self.calls.append(("metrics", metrics))

    def on_complete(self, task, error):
        self.calls.append(("complete", error))


def session(tmp_path, delegate=None, environment=None) -> Session:
    config = SessionConfiguration.ephemeral(
        download_dir=tmp_path, retries=2, backoff_base_seconds=0.01
    )
    return Session(config, delegate=delegate, environment=environment)


def test_a_fresh_then_a_reused_connection(env, tmp_path):
    for tid in (T1, T2):
        env.track(tid, size=200_000)
    heard = Heard()
    s = session(tmp_path, heard)
    before = env.server.state.connections
    first = s.download_task(env.track(T1)["previewUrl"], tmp_path / "a.m4a").run()
    second = s.download_task(env.track(T2)["previewUrl"], tmp_path / "b.m4a").run()
    s.close()
    assert sha256_file(tmp_path / "a.m4a") == env.expected_sha(T1)
    assert env.server.state.connections - before == 1  # the server saw one connection

    (fresh,) = first.metrics.transaction_metrics
    assert not fresh.is_reused_connection
    assert None not in (fresh.domain_lookup_start, fresh.connect_start, fresh.connect_end)
    assert fresh.secure_connection_start is None  # plain HTTP
    assert phases(fresh) == sorted(phases(fresh)) and len(phases(fresh)) == 9
    start, end = first.metrics.task_interval
    assert start <= fresh.fetch_start and fresh.response_end <= end
    assert fresh.count_of_response_body_bytes_received == 200_000
    assert fresh.status_code == 200 and fresh.network_protocol_name == "http/1.1"
    assert (fresh.remote_address, fresh.remote_port) == ("127.0.0.1", env.server.port)

    (reused,) = second.metrics.transaction_metrics
    assert reused.is_reused_connection and reused.local_port == fresh.local_port
    assert reused.domain_lookup_start is None and reused.connect_start is None
    assert phases(reused) == sorted(phases(reused)) and len(phases(reused)) == 5
    assert first.metrics.connects == 1 and second.metrics.connects == 0
    # Apple's order: the metrics, then the completion; once per task
    assert [name for name, _ in heard.calls] == ["metrics", "complete"] * 2
    assert heard.calls[0][1] is first.metrics and heard.calls[2][1] is second.metrics
    assert first.metrics.to_dict()["transaction_metrics"][0]["remote_port"] == env.server.port


def test_a_redirect_and_a_retry_are_transactions_of_their_own(env, tmp_path):
    env.track(T1, size=100_000)
    env.fault(path=f"/previews/{T1}/", kind="status", status=503, times=1)
    s = session(tmp_path)
    url = f"{env.server.url}/r/2/previews/{T1}/preview.m4a"
    task = s.download_task(url, tmp_path / "a.m4a").run()
    s.close()
    assert sha256_file(tmp_path / "a.m4a") == env.expected_sha(T1)
    statuses = [t.status_code for t in task.metrics.transaction_metrics]
    assert statuses == [302, 302, 503, 302, 302, 200]
    assert task.metrics.retries == 1 and task.metrics.redirect_count == 4
    every = [p for t in task.metrics.transaction_metrics for p in phases(t)]
    assert every == sorted(every)  # one request after the other
    summary = task.metrics_summary()
    assert summary["num_retries"] == 1 and summary["http_code"] == 200
    assert summary["url_effective"] == f"{env.server.url}/previews/{T1}/preview.m4a"
    assert 0 < summary["time_redirect"] <= summary["time_starttransfer"] <= summary["time_total"]


def test_a_data_task_and_a_file_url_have_metrics(env, tmp_path):
    s = session(tmp_path)
    data = s.data_task(f"{env.server.url}/lookup?id={T1}").run()
    (t,) = data.metrics.transaction_metrics
    assert t.status_code == 200 and t.count_of_response_body_bytes_received == len(data.data)
    local = tmp_path / "local.bin"
    local.write_bytes(b"x" * 5000)
    task = s.download_task(local.as_uri(), tmp_path / "copy.bin").run()
    s.close()
    (t,) = task.metrics.transaction_metrics  # no network phase, the bytes counted
    assert t.connect_start is None and t.count_of_response_body_bytes_received == 5000


@pytest.fixture
def tls_catalog(tmp_path):
    """The catalog over TLS, its certificate from a private CA (trustme); the CA's file."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    srv = CatalogServer()
    srv.httpd.socket = context.wrap_socket(
        srv.httpd.socket, server_side=True, do_handshake_on_connect=False
    )
    srv.start()
    bundle = tmp_path / "private-ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    yield srv, bundle
    srv.stop()


def test_tls_phases_against_a_private_ca(tls_catalog, tmp_path):
    srv, bundle = tls_catalog
    srv.state.sizes[T1] = 150_000
    s = session(tmp_path, environment={"REQUESTS_CA_BUNDLE": str(bundle)})
    url = f"https://127.0.0.1:{srv.port}/previews/{T1}/preview.m4a"
    task = s.download_task(url, tmp_path / "a.m4a").run()
    again = s.download_task(url, tmp_path / "b.m4a").run()
    s.close()
    assert task.error is None and sha256_file(tmp_path / "a.m4a") == srv.state.sha256_of(T1)
    (t,) = task.metrics.transaction_metrics
    assert t.connect_start < t.secure_connection_start < t.secure_connection_end == t.connect_end
    assert phases(t) == sorted(phases(t)) and len(phases(t)) == 11
    assert t.tls_protocol_version.startswith("TLS") and t.tls_cipher_suite
    summary = task.metrics_summary()
    assert summary["time_connect"] < summary["time_appconnect"] <= summary["time_pretransfer"]
    (r,) = again.metrics.transaction_metrics  # the TLS connection kept: no handshake
    assert r.is_reused_connection and r.secure_connection_start is None


def test_the_ca_bundle_travels_with_a_background_download(env, tls_catalog, tmp_path):
    """A worker started without the CA bundle runs a TLS download queued with it."""
    srv, bundle = tls_catalog
    srv.state.sizes[T1] = 150_000
    env.track(T2, size=50_000)
    first = env.run_process("download", "-b", str(T2))  # the worker starts: no bundle
    assert first.returncode == 0, first.stderr
    env.run_process("wait", str(T2), timeout=60)
    url = f"https://127.0.0.1:{srv.port}/previews/{T1}/preview.m4a"
    refused = env.run_process("download", url, "-P", str(tmp_path / "fg"))
    assert refused.returncode == 1 and "TLS verification failed" in refused.stderr
    queued = env.run_process("download", "-b", url, env={"REQUESTS_CA_BUNDLE": str(bundle)})
    assert queued.returncode == 0, queued.stderr
    rid = queued.stdout.strip()
    waited = env.run_process("wait", rid, timeout=60)
    assert waited.returncode == 0, waited.stderr
    record = env.record(rid)
    assert record["status"] == "completed"
    assert sha256_file(record["path"]) == srv.state.sha256_of(T1)
    metrics = record["metrics"]
    assert 0 < metrics["time_connect"] < metrics["time_appconnect"]
    assert metrics["remote_port"] == srv.port and metrics["size_download"] == 150_000


def test_write_out_prints_curl_variables_per_id(env):
    env.track(T1, size=120_000)
    env.track(T2, size=80_000)
    template = r"%{id} %{status} %{http_code} %{size_download} 100%%\t%{num_connects}\n%{json}\n"
    result = env.run("download", str(T1), str(T2), "bogus", "-w", template)
    assert result.returncode == 2, result.stderr  # (the bad id)
    lines = result.stdout.splitlines()
    assert len(lines) == 6  # two lines per id, the bad one's last
    assert lines[0].startswith(f"{T1} completed 200 120000 100%\t")
    assert lines[2].startswith(f"{T2} completed 200 80000 100%\t")
    assert lines[4] == "bogus error 0 0 100%\t0"
    first, second, bad = (json.loads(lines[i]) for i in (1, 3, 5))
    assert sha256_file(first["filename_effective"]) == env.expected_sha(T1)
    assert first["url_effective"].endswith(f"/previews/{T1}/preview.m4a")
    assert first["speed_download"] > 0 and first["http_version"] == "1.1"
    assert first["remote_ip"] == "127.0.0.1" and first["remote_port"] == env.server.port
    times = [first[k] for k in ("time_connect", "time_starttransfer", "time_total")]
    assert times == sorted(times) and times[-1] > 0
    assert second["size_download"] == 80_000
    assert bad == {**bad, "id": "bogus", "status": "error", "http_code": 0}
    assert "neither a track id nor a URL" in bad["errormsg"]
    # the record keeps the last transfer's metrics; an id already downloaded shows zeros
    assert env.record(str(T1))["metrics"]["size_download"] == 120_000
    again = env.run("download", str(T1), "-w", "%{status} %{size_download} %{filename_effective}")
    assert again.stdout == f"skipped 0 {first['filename_effective']}"


def test_write_out_counts_retries_and_redirects(env):
    env.track(T1, size=60_000)
    env.fault(path=f"/previews/{T1}/", kind="status", status=503, times=1)
    url = f"{env.server.url}/r/1/previews/{T1}/preview.m4a"
    result = env.run(
        "download", url, "-w", "%{num_retries} %{num_redirects} %{http_code} %{url_effective}"
    )
    assert result.returncode == 0, result.stderr
    # one hop in the chain that succeeded (curl's count: a retry starts the chain again)
    assert result.stdout == f"1 1 200 {env.server.url}/previews/{T1}/preview.m4a"


def test_write_out_follows_the_order_the_ids_were_given(env):
    for tid in (T1, T2, 1000003):
        env.track(tid, size=10_000)
    assert env.run("download", str(T1)).returncode == 0  # (then: already downloaded)
    url = f"{env.server.url}/files/w.bin?size=5000"
    items = [str(T2), str(T1), "bogus", url, "1000003", str(T2)]
    result = env.run("download", *items, "-w", "%{id} %{status}\n")
    ids = [line.split()[0] for line in result.stdout.splitlines()]
    assert ids[:3] == [str(T2), str(T1), "bogus"] and ids[4] == "1000003"
    assert ids[3].startswith("u") and len(ids) == 5  # (the URL by its record's id; T2 once)
    assert result.stdout.splitlines()[1] == f"{T1} skipped"


def test_write_out_from_a_file_and_bad_templates(env, tmp_path):
    env.track(T1, size=30_000)
    (tmp_path / "fmt").write_text("%{http_code} %{size_download}\n")
    result = env.run("download", str(T1), "-w", f"@{tmp_path / 'fmt'}")
    assert (result.returncode, result.stdout) == (0, "200 30000\n")
    piped = env.run("download", str(T1), "-w", "@-", input="%{status}")
    assert (piped.returncode, piped.stdout) == (0, "skipped")
    for args, says in (
        (["-w", "%{time_nope}"], "unknown --write-out variable %{time_nope}"),
        (["-w", "%{http_code"], "without its closing }"),
        (["-w", "@" + str(tmp_path / "missing")], "cannot read the --write-out template"),
        (["-w", "@"], "needs a file name after the @"),
        (["-w", "@/dev/zero"], "is over 64 KiB"),
        (["-w", "@-", "-"], "cannot both come from standard input"),
        (["-w", "x", "--json"], "--write-out and --json"),
        (["-w", "x", "-b"], "not the background worker's"),
    ):
        bad = env.run("download", str(T2), *args)
        assert bad.returncode == 2 and says in bad.stderr, (args, bad.stderr)
        assert bad.stdout == "" and "Traceback" not in bad.stderr
    assert env.preview_requests(T2) == []  # nothing was fetched for a bad template
    assert env.record(str(T2)) is None


def test_an_older_state_file_gains_the_metrics_column(env):
    """A state file of this format written by a halftunes before metrics: opened, the column
    added once, its records kept."""
    import sqlite3

    env.track(T1, size=20_000)
    assert env.run("download", str(T1)).returncode == 0
    db = env.state_dir / "downloads.db"
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE downloads DROP COLUMN metrics")
    conn.commit()
    conn.close()
    assert env.record(str(T1))["metrics"] is None  # the record as it was
    env.track(T2, size=20_000)
    assert env.run("download", str(T2)).returncode == 0
    assert env.record(str(T2))["metrics"]["size_download"] == 20_000
    assert env.record(str(T1))["status"] == "completed"


def test_the_metrics_cost_no_request(env, tmp_path):
    """Measuring adds no request and no connection: a download with metrics sends exactly
    one GET on one connection (the lookup's connection reused)."""
    env.track(T1, size=40_000)
    before = env.server.state.connections
    result = env.run("download", str(T1), "-w", "%{num_connects}")
    assert result.returncode == 0
    assert len(env.preview_requests(T1)) == 1
    assert env.server.state.connections - before == 1 and result.stdout == "0"
    assert Path(env.record(str(T1))["path"]).stat().st_size == 40_000
