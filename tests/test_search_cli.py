"""`halftunes search` end to end against the local catalog server."""

import json

import pytest


def test_search_json_is_apples_objects(env):
    result = env.run("search", "jack", "johnson", "--limit", "5", "--json")
    assert result.returncode == 0, result.stderr
    items = json.loads(result.stdout)
    assert len(items) == 5
    assert all(i["artistName"] == "Jack Johnson" for i in items)
    for key in (
        "trackId",
        "trackName",
        "artistName",
        "collectionName",
        "previewUrl",
        "trackTimeMillis",
    ):
        assert key in items[0]
    sent = env.server.state.requests_for("/search")[-1]
    assert sent["term"] == "jack johnson"
    assert sent["user_agent"].startswith("halftunes/")


def test_search_plain_lines_on_a_pipe(env):
    result = env.run("search", "jack johnson", "--limit", "2")
    lines = result.stdout.strip().split("\n")
    assert len(lines) == 2
    fields = lines[0].split("\t")
    assert fields[0] == "1000001" and fields[2] == "Jack Johnson" and fields[4] == "5:24"


@pytest.mark.parametrize("term", ["王菲", "🎸 Guitar", "Rock & Roll #1", "1+1=2", "Either/Or"])
def test_unicode_and_reserved_characters_reach_the_server(env, term):
    items = env.json("search", term)
    assert env.server.state.requests_for("/search")[-1]["term"] == term
    assert items, f"no result for {term!r}"


def test_no_results_is_friendly(env):
    result = env.run("search", "zzzz-nothing")
    assert result.returncode == 0 and result.stdout == ""
    assert "No songs found" in result.stderr


@pytest.mark.parametrize("status", [403, 429])
def test_rate_limit_exits_1_with_hint(env, status):
    env.fault(path="/search", kind="status", status=status)
    result = env.run("search", "jack")
    assert result.returncode == 1
    assert "rate limited" in result.stderr and "20 calls a minute" in result.stderr
    # never cached: the next call goes to the server and succeeds
    assert env.run("search", "jack").returncode == 0


@pytest.mark.parametrize("kind", ["malformed", "html", "wrong_shape"])
def test_bad_api_bodies_exit_1_without_traceback(env, kind):
    env.fault(path="/search", kind=kind)
    result = env.run("search", "jack")
    assert result.returncode == 1
    assert "iTunes API" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().split("\n")) <= 2


def test_offline_hit_and_miss(env):
    assert env.run("search", "banana", "--json").returncode == 0
    before = len(env.server.state.requests_for("/search"))
    hit = env.run("search", "banana", "--offline", "--json")
    assert hit.returncode == 0 and json.loads(hit.stdout)[0]["trackName"] == "Banana Pancakes"
    assert len(env.server.state.requests_for("/search")) == before  # no request
    miss = env.run("search", "pancakes", "--offline")
    assert miss.returncode == 1 and "no cached answer" in miss.stderr


def test_api_url_must_follow_the_plain_http_rule(env):
    result = env.run("search", "jack", env={"HALFTUNES_API_URL": "http://example.com"})
    assert result.returncode == 2
    assert "App Transport Security" in result.stderr


def test_server_down_exits_1(env):
    result = env.run(
        "search", "jack", env={"HALFTUNES_API_URL": "http://127.0.0.1:9", "HALFTUNES_RETRIES": "0"}
    )
    assert result.returncode == 1 and "could not connect" in result.stderr


def test_help_and_version(env):
    assert env.run("--version").stdout.startswith("halftunes ")
    for cmd in (
        "search",
        "download",
        "pause",
        "resume",
        "cancel",
        "list",
        "wait",
        "upload",
        "play",
    ):
        result = env.run(cmd, "--help")
        assert result.returncode == 0 and "Example" in result.stdout, cmd


COMMANDS = [
    "search",
    "download",
    "pause",
    "resume",
    "cancel",
    "clean",
    "list",
    "wait",
    "upload",
    "play",
    "open",
    "config",
    "config show",
    "config path",
]


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_has_examples_and_no_escapes(env, command):
    result = env.run(*command.split(), "--help")
    assert result.returncode == 0
    assert "Example" in result.stdout, result.stdout
    assert "\\[" not in result.stdout  # typer's rich escaping must not show


def test_help_shows_variadic_arguments_defaults_and_exit_codes(env):
    assert "ID_OR_URL..." in env.run("download", "--help").stdout
    assert "ID..." in env.run("pause", "--help").stdout
    assert "[default: PUT]" in env.run("upload", "--help").stdout
    assert "[default: 25" in env.run("search", "--help").stdout
    top = env.run("--help").stdout
    assert "Exit status: 0 success" in top and "124" in top


@pytest.mark.parametrize(
    "args",
    [
        ["download", "1000001", "-q"],
        ["list", "--no-color"],
        ["list", "-v", "--json"],
        ["--session", "ephemeral", "-q", "download", "1000002"],
        ["--session", "default", "list", "--session", "ephemeral"],
    ],
)
def test_global_options_after_the_command(env, args):
    result = env.run(*args)
    assert result.returncode == 0, result.stderr
    assert "No such option" not in result.stderr
