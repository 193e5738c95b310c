"""`PartialFile` and the retry policy as units, with a fake clock and a fake jitter."""

from __future__ import annotations

import threading

import pytest

from halftunes_cli.errors import TransferError
from halftunes_cli.retry import RetryPolicy, sleep_unless_stopped
from halftunes_cli.tasks import checkpointer as checkpointing
from halftunes_cli.tasks.checkpointer import Checkpointer
from halftunes_cli.tasks.partial import PartialFile, PartialShrank


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_checkpoints_fall_due_once_a_second_and_record_only_synced_bytes(tmp_path):
    clock = FakeClock()
    part = PartialFile(tmp_path / "a.part", clock=clock)
    part.open_at(0)
    part.write(b"x" * 10)
    assert not part.is_checkpoint_due and part.synced == 0 and part.length == 10
    clock.now += 0.99
    assert not part.is_checkpoint_due
    clock.now += 0.02
    assert part.is_checkpoint_due
    assert part.checkpoint() == 10 and part.synced == 10
    assert not part.is_checkpoint_due
    part.write(b"y" * 5)
    assert part.synced == 10  # never ahead of the disk
    part.close()


def test_a_new_partial_is_never_truncated_and_a_longer_one_is_cut(tmp_path, monkeypatch):
    calls = []
    real_open = open

    class Spy:
        def __init__(self, f):
            self.f = f

        def truncate(self, n):
            calls.append(n)
            return self.f.truncate(n)

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr("builtins.open", lambda *a, **k: Spy(real_open(*a, **k)))
    part = PartialFile(tmp_path / "b.part")
    part.open_at(0)
    part.write(b"z" * 100)
    part.checkpoint()
    part.close()
    part.open_at(100)  # resuming at the partial's length: no truncate (no ext4 flush)
    part.close()
    assert calls == []
    part.open_at(40)  # bytes past the offset must go
    part.close()
    assert calls == [40] and (tmp_path / "b.part").stat().st_size == 40


def test_a_partial_shorter_than_the_offset_is_restarted(tmp_path):
    path = tmp_path / "c.part"
    path.write_bytes(b"a" * 10)
    part = PartialFile(path, synced=50)
    with pytest.raises(PartialShrank):
        part.open_at(50)
    assert path.stat().st_size == 0 and part.synced == 0


def test_starting_offset_and_finish_size_check(tmp_path):
    path = tmp_path / "d.part"
    path.write_bytes(b"a" * 30)
    part = PartialFile(path, synced=30)
    assert part.starting_offset(bytes_total=100) == 30
    part.release()
    part = PartialFile(path, synced=20)  # the record vouches for 20 bytes: the rest is cut
    assert part.starting_offset(bytes_total=100) == 20 and path.stat().st_size == 20
    part.release()
    part = PartialFile(path, synced=20)
    assert part.starting_offset(bytes_total=10) == 0  # longer than the resource: not its bytes
    path.write_bytes(b"b" * 8)
    with pytest.raises(TransferError, match="size check failed"):
        part.finish(tmp_path / "d", 9)
    assert part.finish(tmp_path / "d", 8) == 8
    assert (tmp_path / "d").read_bytes() == b"b" * 8 and not path.exists()


def test_retry_policy_delays():
    policy = RetryPolicy(retries=3, base_seconds=0.5, max_seconds=3.0, jitter=lambda: 1.0)
    assert [policy.delay_seconds(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    low = RetryPolicy(base_seconds=1.0, jitter=lambda: 0.0)
    assert low.delay_seconds(1) == 0.75  # jitter takes up to a quarter off
    assert policy.delay_seconds(1, retry_after_seconds=7) == 7
    assert policy.delay_seconds(1, retry_after_seconds=10_000) == 120.0  # the documented cap
    assert not policy.gives_up_after(3) and policy.gives_up_after(4)


def test_a_stop_request_cuts_the_back_off_short():
    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    assert sleep_unless_stopped(30, stop) is True
    assert sleep_unless_stopped(0, threading.Event()) is False


# -- the checkpointer: off the receiving thread, and never ahead of the disk ----------------


def test_the_record_never_runs_ahead_of_the_fsynced_length(tmp_path):
    timeline: list[tuple[str, int]] = []

    def fsync(fd: int) -> None:
        import os

        timeline.append(("fsync", os.fstat(fd).st_size))  # everything here is durable now

    part = PartialFile(tmp_path / "e.part", fsync=fsync, checkpoint_seconds=0)
    part.open_at(0)
    worker = Checkpointer("test")
    for _ in range(1, 30):
        part.write(b"x" * 1000)
        part.checkpoint_async(worker, lambda length: timeline.append(("journal", length)))
    part.wait_for_checkpoint()
    part.close()
    journaled = [(i, n) for i, (what, n) in enumerate(timeline) if what == "journal"]
    assert journaled
    for i, length in journaled:
        durable = max((n for what, n in timeline[:i] if what == "fsync"), default=-1)
        assert length <= durable, timeline


def test_the_receiving_thread_does_not_wait_for_the_disk(tmp_path, monkeypatch):
    release = threading.Event()
    entered = threading.Event()

    def slow_fsync(fd: int) -> None:
        entered.set()
        assert release.wait(10)

    monkeypatch.setattr("halftunes_cli.tasks.partial.MAX_DIRTY_BYTES", 100)
    part = PartialFile(tmp_path / "f.part", fsync=slow_fsync)
    part.open_at(0)
    part.write(b"a" * 50)
    part.checkpoint_async(Checkpointer("test"))
    assert entered.wait(10)  # the disk is stuck in fsync...
    part.write(b"b" * 40)  # ...and writing goes on
    assert part.length == 90 and part.synced == 0 and not part.is_far_ahead
    part.write(b"c" * 20)
    assert part.is_far_ahead  # 110 > 100 past the disk: now the writer would wait
    release.set()
    part.wait_for_checkpoint()
    assert part.synced == 50
    part.close()


def test_durability_crash_never_fsyncs(tmp_path):
    calls = []
    part = PartialFile(tmp_path / "g.part", durable=False, fsync=calls.append)
    part.open_at(0)
    part.write(b"z" * 10)
    part.checkpoint()
    part.checkpoint_async(checkpointing.shared_checkpointer())
    part.wait_for_checkpoint()
    part.close()
    part.finish(tmp_path / "g", 10)
    assert calls == [] and (tmp_path / "g").read_bytes() == b"z" * 10
