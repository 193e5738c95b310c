"""Records as units: the transition table, and the repository's transitions on a real
SQLite state file in a temporary dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from halftunes_cli.errors import IllegalTransition
from halftunes_cli.records import (
    TRANSITIONS,
    Ending,
    Records,
    RecordStatus,
    Settlement,
    StopRequest,
    check_transition,
)
from halftunes_cli.store import Store
from halftunes_cli.targets import Target
from halftunes_cli.tasks.partial import recover_partial

S = RecordStatus


@pytest.mark.parametrize(
    "old, new, allowed",
    [
        (None, S.QUEUED, True),
        (None, S.RUNNING, True),
        (None, S.COMPLETED, False),
        (None, S.PAUSED, False),
        (S.QUEUED, S.RUNNING, True),
        (S.QUEUED, S.COMPLETED, False),
        (S.RUNNING, S.COMPLETED, True),
        (S.PAUSED, S.RUNNING, True),
        (S.PAUSED, S.COMPLETED, False),
        (S.FAILED, S.PAUSED, False),
        (S.COMPLETED, S.FAILED, False),
        (S.COMPLETED, S.RUNNING, True),  # --force, or the file is gone
    ],
)
def test_transition_table(old, new, allowed):
    if allowed:
        assert check_transition(old, new) is new
    else:
        with pytest.raises(IllegalTransition):
            check_transition(old, new)


def test_every_status_has_a_row_and_json_values_are_unchanged():
    assert set(TRANSITIONS) == {None, *RecordStatus}
    assert [str(s) for s in RecordStatus] == [  # (the design's list, in its order)
        "queued",
        "waiting",
        "running",
        "paused",
        "completed",
        "failed",
    ]
    assert [str(r) for r in StopRequest] == ["pause", "cancel"]


@pytest.fixture
def records(tmp_path):
    r = Records(Store(tmp_path / "state"))
    yield r
    r.close()


def target(tmp_path: Path, rid: str = "1") -> Target:
    return Target(rid, f"https://example.com/{rid}.m4a", f"Song {rid}", lambda s: f"song{s}.m4a")


def claim(records: Records, tmp_path: Path, item, **kw):
    kw = {
        "owner": records.owner_token(),
        "force": False,
        "queue": False,
        "download_dir": tmp_path,
        "session_kind": "default",
        **kw,
    }
    return records.claim([item], **kw)[0]


def test_claim_checkpoint_settle(records, tmp_path):
    c = claim(records, tmp_path, target(tmp_path))
    assert c.outcome == "claimed" and c.record.status is S.RUNNING
    assert c.record.path == str(tmp_path / "song.m4a")
    owner = records.owner_token()
    assert records.checkpoint("1", owner, 100, 1000, '"e"', None) is None
    assert records.get("1").bytes_received == 100
    ((record, ours),) = records.settle_many(
        [Settlement("1", owner, Ending.COMPLETED, 1000, 1000, '"e"', None, "x")]
    )
    assert ours and record.status is S.COMPLETED and record.error is None and record.owner is None


def test_a_second_track_with_the_same_name_gets_its_id(records, tmp_path):
    claim(records, tmp_path, target(tmp_path, "1"))
    second = claim(records, tmp_path, target(tmp_path, "2"))
    assert second.record.path == str(tmp_path / "song (2).m4a")


def test_a_stop_request_reaches_the_checkpoint_and_cancel_forgets_the_partial(records, tmp_path):
    c = claim(records, tmp_path, target(tmp_path))
    Path(c.record.part_path).write_bytes(b"x" * 10)
    stop = records.request_stop("1", StopRequest.CANCEL)
    assert stop.action == "waiting"  # our own owner lock is alive
    assert (
        records.checkpoint("1", records.owner_token(), 10, None, None, None) is StopRequest.CANCEL
    )
    ((record, ours),) = records.settle_many(
        [Settlement("1", records.owner_token(), Ending.CANCELLED, 10, None, None, None, None)]
    )
    assert (record, ours) == (None, True)
    assert records.get("1") is None and not Path(c.record.part_path).exists()


def test_a_settle_by_a_process_that_lost_the_record_changes_nothing(records, tmp_path):
    claim(records, tmp_path, target(tmp_path))
    ((record, ours),) = records.settle_many(
        [Settlement("1", "someone-else", Ending.FAILED, 0, None, None, None, "x")]
    )
    assert not ours and record.status is S.RUNNING


def test_settle_many_writes_each_ending_by_its_own_rules_in_one_transaction(records, tmp_path):
    owner = records.owner_token()
    for rid in "123":
        claim(records, tmp_path, target(tmp_path, rid))
    transactions = []
    real = records.store.transaction

    def counted():
        transactions.append(1)
        return real()

    records.store.transaction = counted
    settled = records.settle_many(
        [
            Settlement("1", owner, Ending.COMPLETED, 1000, 1000, '"e1"', None, None),
            Settlement("2", "someone-else", Ending.FAILED, 0, None, None, None, "x"),
            Settlement("3", owner, Ending.FAILED, 10, 1000, None, None, "HTTP 404", permanent=True),
        ]
    )
    assert transactions == [1]
    (one, ours1), (two, ours2), (three, ours3) = settled
    assert ours1 and one.status is S.COMPLETED and one.etag == '"e1"' and one.owner is None
    assert not ours2 and two.status is S.RUNNING  # lost to another process: untouched
    assert ours3 and three.status is S.FAILED and three.permanent and three.error == "HTTP 404"


def test_a_dead_owner_is_reconciled_to_paused_at_the_partials_length(tmp_path):
    state = tmp_path / "state"
    first = Records(Store(state))
    c = claim(first, tmp_path, target(tmp_path))
    Path(c.record.part_path).write_bytes(b"y" * 1234)
    first.store.close()
    os.close(first._owner._fd)  # the owner "dies": its lock goes, its lock file stays
    first._owner._fd = None
    second = Records(Store(state), recover_partial)  # (the session gives it the partials' keeper)
    fixed = second.reconcile_dead_owners()
    assert [r.id for r in fixed] == ["1"]
    record = second.get("1")
    assert record.status is S.PAUSED and record.bytes_received == 1234
    assert "stopped while downloading" in record.error
    second.close()


def test_completed_record_with_its_file_is_skipped_unless_forced(records, tmp_path):
    claim(records, tmp_path, target(tmp_path))
    records.settle_many(
        [Settlement("1", records.owner_token(), Ending.COMPLETED, 3, 3, None, None, None)]
    )
    (tmp_path / "song.m4a").write_bytes(b"abc")
    assert claim(records, tmp_path, records.get("1")).outcome == "skipped"
    forced = claim(records, tmp_path, records.get("1"), force=True)
    assert forced.outcome == "claimed" and forced.record.bytes_received == 0


def test_queueing_a_record_whose_waiting_owner_died_takes_it_over(records, tmp_path):
    """A transfer waiting for the network in a process that died is not 'queued already':
    queueing it again hands it to the worker (owner cleared), it is not left waiting."""
    c = claim(records, tmp_path, target(tmp_path))
    with records.store.transaction() as conn:  # (as a dead process left it)
        records.store.update_record(conn, c.id, status="waiting", owner="gone-owner-token")
    again = claim(records, tmp_path, c.record, owner=None, queue=True, session_kind="background")
    assert again.outcome == "queued"
    record = records.get(c.id)
    assert record.status == "queued" and record.owner is None
