"""A newcomer's hour (issue 20): each stumble of a first hour with halftunes, as a test that
replays it and checks what the person sees (the screen through pyte, the streams, the exit
status, the files)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HALFTUNES, Env, Terminal, sha256_file, visible_lines

from halftunes_cli.testing.catalog import CatalogServer

T, U = 1000001, 1000002
MB = 1_000_000
WIDTHS = [40, 80, 200]


def lookups(server: CatalogServer) -> int:
    return len(server.state.requests_for("/lookup"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- 1. a stale preview address outlives its catalog ------------------------------------------
def test_cached_tracks_belong_to_the_catalog_that_answered(env):
    assert env.run("search", "jack", "johnson").returncode == 0  # the tracks are cached
    moved = CatalogServer().start()  # the offline catalog, restarted on another port
    try:
        env.server.stop(drop_connections=True)
        result = env.run("download", str(T), env={"HALFTUNES_API_URL": moved.url})
        assert result.returncode == 0, result.stderr
        assert sha256_file(result.stdout.strip()) == moved.state.sha256_of(T)
        assert lookups(moved) == 1  # the cache of another catalog was not used
    finally:
        moved.stop()


def test_a_cached_preview_address_that_refuses_is_looked_up_again(env):
    dead = f"http://127.0.0.1:{free_port()}/previews/{T}/preview.m4a"
    env.fault(path="/search", kind="results", results=[{**env.server.state.tracks[T], "previewUrl": dead}])
    assert env.run("search", "moved").returncode == 0  # cached, with an address now dead
    result = env.run("-v", "download", str(T))
    assert result.returncode == 0, result.stderr
    assert sha256_file(result.stdout.strip()) == env.expected_sha(T)
    assert lookups(env.server) == 1  # one fresh lookup, after the address refused
    assert "looking it up again" in result.stderr


@pytest.mark.parametrize("how", ["reload-ignoring-cache", "--force"])
def test_reload_ignoring_cache_and_force_skip_the_cached_tracks(env, how):
    assert env.run("search", "jack", "johnson").returncode == 0
    args = ["download", str(T)] + (["--force"] if how == "--force" else [])
    extra = {"HALFTUNES_CACHE_POLICY": how} if how != "--force" else {}
    assert env.run(*args, env=extra).returncode == 0
    assert lookups(env.server) == 1


def test_cached_tracks_download_while_the_lookup_api_is_down(env):
    assert env.run("search", "jack", "johnson").returncode == 0  # T is known, 1000200 is not
    env.fault(path="/lookup", kind="status", status=503, times=-1)
    result = env.run("download", str(T), "1000200", str(T), env={"HALFTUNES_RETRIES": "0"})
    assert result.returncode == 1
    assert env.state_record(str(T))["status"] == "completed"
    assert "2 ids: 1 completed, 1 failed" in result.stderr


def test_v_says_where_track_details_came_from(env):
    assert env.run("search", "jack", "johnson").returncode == 0
    result = env.run("-v", "download", str(T))
    assert result.returncode == 0
    assert re.search(r"1 track\(s\) from the cache", result.stderr), result.stderr
