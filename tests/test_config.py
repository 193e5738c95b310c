"""Configuration precedence (flag > env > file > default) and clear errors for bad values."""

import json

import pytest

from halftunes_cli.config import SessionConfiguration, check_url, load_configuration
from halftunes_cli.errors import ConfigError, InsecureURLError, UnsupportedURLError


@pytest.fixture
def cfg_env(tmp_path):
    path = tmp_path / "config.toml"
    return path, {"HALFTUNES_CONFIG": str(path)}


def test_defaults(tmp_path):
    c = load_configuration({}, {"XDG_CONFIG_HOME": str(tmp_path)})
    assert (c.kind, c.request_timeout, c.max_connections_per_host, c.retries) == (
        "default",
        60.0,
        6,
        5,
    )
    assert c.resource_timeout == 7 * 24 * 3600
    assert c.cache_policy == "use-protocol" and c.allow_insecure_http is False
    assert all(v == "default" for v in c.sources.values())


def test_precedence_each_level(cfg_env):
    path, env = cfg_env
    path.write_text('retries = 3\nlimit = 10\ncountry = "gb"\n[headers]\nX-A = "1"\n')
    env = {**env, "HALFTUNES_LIMIT": "20", "HALFTUNES_RETRIES": "4"}
    c = load_configuration({"retries": 1}, env)
    assert (c.retries, c.sources["retries"]) == (1, "flag")
    assert (c.limit, c.sources["limit"]) == (20, "env")
    assert (c.country, c.sources["country"]) == ("GB", "file")
    assert (c.headers, c.sources["headers"]) == ({"X-A": "1"}, "file")
    assert (c.max_connections_per_host, c.sources["max_connections_per_host"]) == (6, "default")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("retries = 'many'", "retries"),
        ("limit = 500", "limit"),
        ("session = 'turbo'", "session"),
        ("allow_insecure_http = 'yes'", "allow_insecure_http"),
        ("colour = true", "unknown key 'colour'"),
        ("this is not toml", "not valid TOML"),
        ("[headers]\nX = 1", "headers"),
    ],
)
def test_bad_config_file(cfg_env, text, fragment):
    path, env = cfg_env
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_configuration({}, env)
    assert fragment in str(info.value) and str(path) in str(info.value)
    assert info.value.exit_code == 2


def test_bad_env_value(tmp_path):
    with pytest.raises(ConfigError, match="HALFTUNES_REQUEST_TIMEOUT"):
        load_configuration(
            {}, {"XDG_CONFIG_HOME": str(tmp_path), "HALFTUNES_REQUEST_TIMEOUT": "soon"}
        )


def test_missing_explicit_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_configuration({}, {"HALFTUNES_CONFIG": str(tmp_path / "nope.toml")})


@pytest.mark.parametrize(
    "url, allowed, error",
    [
        ("https://itunes.apple.com/search", False, None),
        ("http://127.0.0.1:8000/x", False, None),
        ("http://localhost/x", False, None),
        ("http://[::1]:80/x", False, None),
        ("http://127.5.6.7/x", False, None),
        ("http://example.com/x", False, InsecureURLError),
        ("http://example.com/x", True, None),
        ("http://10.0.0.1/x", False, InsecureURLError),
        ("ftp://example.com/x", False, UnsupportedURLError),
        ("gopher://example.com/x", False, UnsupportedURLError),
        ("javascript:alert(1)", False, UnsupportedURLError),
    ],
)
def test_app_transport_security(url, allowed, error):
    if error is None:
        assert check_url(url, allowed) == url
    else:
        with pytest.raises(error):
            check_url(url, allowed)


def test_session_configuration_factories():
    assert SessionConfiguration.default().kind == "default"
    eph = SessionConfiguration.ephemeral()
    assert eph.is_ephemeral and not eph.persists_state
    bg = SessionConfiguration.background("my-id")
    assert bg.is_background and bg.identifier == "my-id"


def test_config_show_json_sources(env, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("retries = 2\ncache_policy = 'reload-ignoring-cache'\n")
    result = env.run(
        "config", "show", "--json", env={"HALFTUNES_CONFIG": str(cfg), "HALFTUNES_LIMIT": "7"}
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["retries"] == {"value": 2, "source": "file"}
    assert shown["limit"] == {"value": 7, "source": "env"}
    assert shown["state_dir"] == {"value": str(env.state_dir), "source": "env"}
    assert shown["request_timeout"] == {"value": 60.0, "source": "default"}
    result = env.run("--session", "ephemeral", "config", "show", "--json")
    assert json.loads(result.stdout)["session"] == {"value": "ephemeral", "source": "flag"}


def test_bad_config_file_exits_2_without_traceback(env, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("retries = [1, 2]\n")
    result = env.run("list", env={"HALFTUNES_CONFIG": str(cfg)})
    assert result.returncode == 2
    assert "retries" in result.stderr and str(cfg) in result.stderr
    assert "Traceback" not in result.stderr


def test_config_path(env, tmp_path):
    result = env.run("config", "path", env={"HALFTUNES_CONFIG": str(tmp_path / "x.toml")})
    assert result.stdout.strip() == str(tmp_path / "x.toml")
