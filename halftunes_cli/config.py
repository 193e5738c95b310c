"""Session configurations (NSURLSessionConfiguration): defaults, config file, env and flags."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError, InsecureURLError, UnsupportedURLError, UsageError
from .headers import parse_decimal, parse_uint

APP_NAME = "halftunes"
DEFAULT_API_URL = "https://itunes.apple.com"
SESSION_KINDS = ("default", "ephemeral", "background")
CACHE_POLICIES = (
    "use-protocol",
    "reload-ignoring-cache",
    "return-cache-else-load",
    "return-cache-dont-load",
)


def _default_state_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_state_dir(APP_NAME))


def _default_download_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_music_dir()) / APP_NAME


def _default_config_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml"


# key -> (python type(s) accepted, description used in error messages)
_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "session": ((str,), "one of default, ephemeral, background"),
    "download_dir": ((str,), "a path"),
    "state_dir": ((str,), "a path"),
    "request_timeout": ((int, float), "a number of seconds > 0, at most 86400 (a day)"),
    "resource_timeout": ((int, float), "a number of seconds > 0, at most 315360000 (ten years)"),
    "max_connections_per_host": ((int,), "an integer from 1 to 64"),
    "retries": ((int,), "an integer from 0 to 100"),
    "cache_policy": ((str,), "one of " + ", ".join(CACHE_POLICIES)),
    "allow_insecure_http": ((bool,), "true or false"),
    "country": ((str,), "a two-letter country code"),
    "limit": ((int,), "an integer between 1 and 200"),
    "headers": ((dict,), "a table of strings"),
    "api_url": ((str,), "an http(s) URL"),
    "durability": ((str,), "power-cut or crash"),
    "waits_for_connectivity": ((bool,), "true or false"),
    "connectivity_probe_seconds": ((int, float), "a number of seconds from 0.1 to 3600"),
    "limit_rate": ((int, str), "bytes per second, or with k, M or G (1024-based), e.g. 500k"),
    "embed_metadata": ((bool,), "true or false"),
    "embed_artwork": ((bool,), "true or false"),
    "connections_per_file": ((int, str), "a number of connections from 1 to 16, or auto"),
}
DURABILITY = ("power-cut", "crash")
# Apple's NSURLSessionTaskPriorityLow, Default and High, by the names `--priority` takes
PRIORITIES = {"low": 0.25, "default": 0.5, "high": 0.75}
TIMEOUT_LIMITS = {"request_timeout": 86_400.0, "resource_timeout": 315_360_000.0}
CONFIG_KEYS = tuple(_KEYS)


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, allow_insecure_http: bool, extra_schemes: tuple[str, ...] = ()) -> str:
    """The App Transport Security rule: https anywhere, http only to loopback unless allowed."""
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError as exc:
        raise UnsupportedURLError(f"malformed URL {url!r}: {exc}") from exc
    if hostname is not None and any(c.isspace() for c in hostname):
        raise UnsupportedURLError(f"malformed URL {url!r}: a space in the host name")
    scheme = parts.scheme.lower()
    if scheme in extra_schemes:
        return url
    if scheme not in ("http", "https"):
        shown = scheme + ":" if scheme else "no scheme"
        raise UnsupportedURLError(
            f"unsupported URL scheme ({shown}) in {url!r}",
            "halftunes downloads https:// URLs (and http:// on this machine, file:// paths)",
        )
    if not hostname:
        raise UnsupportedURLError(f"URL has no host: {url!r}")
    if scheme == "http" and not allow_insecure_http and not is_loopback_host(hostname):
        raise InsecureURLError(
            f"refusing plain http:// to {hostname} (App Transport Security rule)",
            "use https://, or set allow_insecure_http = true in the config file "
            "(or HALFTUNES_ALLOW_INSECURE_HTTP=1) if you trust the network",
        )
    return url


@dataclass
class SessionConfiguration:
    """What a Session needs to know; build one with default(), ephemeral() or background(id)."""

    kind: str = "default"
    identifier: str | None = None
    request_timeout: float = 60.0
    resource_timeout: float = 7 * 24 * 3600.0
    headers: dict[str, str] = field(default_factory=dict)
    max_connections_per_host: int = 6
    retries: int = 5
    backoff_base_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    cache_policy: str = "use-protocol"
    allow_insecure_http: bool = False
    download_dir: Path = field(default_factory=_default_download_dir)
    state_dir: Path = field(default_factory=_default_state_dir)
    api_url: str = DEFAULT_API_URL
    country: str = "US"
    limit: int = 25
    # power-cut: partials are fsynced at every checkpoint and files before their rename, so
    # neither a crash nor a power cut can cost a byte or show a corrupt file; crash: nothing
    # is fsynced (a killed process loses nothing, a power cut may cost the partial).
    durability: str = "power-cut"
    # waitsForConnectivity: a task that cannot reach its host waits (status `waiting`) and
    # probes again, at most `connectivity_probe_seconds` apart, until the resource timeout,
    # instead of failing. The background session's default is True, the others' False.
    waits_for_connectivity: bool = False
    connectivity_probe_seconds: float = 30.0
    # bytes per second for all transfers of the process together (None, 0: no limit)
    limit_rate: int | None = None
    # write the track's details / its artwork into a finished preview (mutagen: `tags` extra)
    embed_metadata: bool = False
    embed_artwork: bool = False
    # connections for one file (`-x`): a file is split into ranges fetched at once when the
    # server serves ranges with a validator; 0 is auto (8 for files of 64 MiB or more)
    connections_per_file: int = 1
    protocol_classes: dict[str, Any] = field(default_factory=dict)
    # Mode of downloaded files; None: the process's umask decides (a background transfer
    # carries the umask of the command that queued it, since the worker's is 077).
    file_mode: int | None = None
    # key -> "flag" | "env" | "file" | "default": where each value came from
    sources: dict[str, str] = field(default_factory=dict)
    config_path: Path | None = None

    # The factories read the same places as the command line (environment, config file);
    # explicit arguments win, as a command-line flag does.
    @classmethod
    def default(cls, **overrides: Any) -> SessionConfiguration:
        return _configured("default", overrides)

    @classmethod
    def ephemeral(cls, **overrides: Any) -> SessionConfiguration:
        return _configured("ephemeral", overrides)

    @classmethod
    def background(cls, identifier: str = "halftunes", **overrides: Any) -> SessionConfiguration:
        return _configured("background", {**overrides, "identifier": identifier})

    @property
    def is_ephemeral(self) -> bool:
        return self.kind == "ephemeral"

    @property
    def is_background(self) -> bool:
        return self.kind == "background"

    @property
    def is_durable(self) -> bool:
        """Whether bytes are fsynced (durability = power-cut)."""
        return self.durability != "crash"

    @property
    def persists_state(self) -> bool:
        return self.kind != "ephemeral"

    def check_url(self, url: str) -> str:
        return check_url(url, self.allow_insecure_http, tuple(self._extra_schemes()))

    def _extra_schemes(self) -> list[str]:
        schemes = ["file"]
        for prefix in self.protocol_classes:
            scheme = prefix.split(":", 1)[0].lower()
            if scheme:
                schemes.append(scheme)
        return schemes

    def describe(self) -> dict[str, dict[str, Any]]:
        """Effective values and their sources, for `config show`."""
        out: dict[str, dict[str, Any]] = {}
        for key in CONFIG_KEYS:
            value = self.kind if key == "session" else getattr(self, key)
            if isinstance(value, Path):
                value = str(value)
            if key == "connections_per_file" and value == 0:
                value = "auto"  # (as it is written: 0 is no count)
            out[key] = {"value": value, "source": self.sources.get(key, "default")}
        return out


def _configured(kind: str, overrides: dict[str, Any]) -> SessionConfiguration:
    """A configuration of `kind`: config keys in `overrides` act as flags; the other fields
    (identifier, back-off, protocol_classes, ...) are set as given."""
    flags = {
        k: str(v) if isinstance(v, Path) else v for k, v in overrides.items() if k in CONFIG_KEYS
    }
    flags["session"] = kind
    config = load_configuration(flags)
    extra = {k: v for k, v in overrides.items() if k not in CONFIG_KEYS}
    unknown = sorted(set(extra) - {f.name for f in dataclasses.fields(SessionConfiguration)})
    if unknown:
        raise TypeError(f"SessionConfiguration has no field {unknown[0]!r}")
    config = dataclasses.replace(config, **extra)
    if kind != "background":
        config.identifier = extra.get("identifier")
    return config


def _coerce(key: str, raw: Any, origin: str, from_text: bool = True) -> Any:
    """Validate one value (from the file, env or a flag); env and flags arrive as strings."""
    types, expected = _KEYS[key]
    value: Any = raw
    if from_text and isinstance(raw, str) and str not in types:
        text = raw.strip()
        try:
            if bool in types:
                low = text.lower()
                if low in ("1", "true", "yes", "on"):
                    value = True
                elif low in ("0", "false", "no", "off"):
                    value = False
                else:
                    raise ValueError
            else:  # ASCII numbers only: int('١') is 1, but nobody means that
                number: float | None = (
                    parse_uint(text) if float not in types else parse_decimal(text)
                )
                if number is None:
                    raise ValueError
                value = number
        except ValueError:
            raise ConfigError(
                f"{origin}: {key} = {raw!r} is not valid", f"expected {expected}"
            ) from None
    if isinstance(value, bool) and bool not in types:
        raise ConfigError(f"{origin}: {key} = {raw!r} is not valid", f"expected {expected}")
    if not any(type(value) is t or isinstance(value, t) for t in types):  # (keeps `value` Any)
        raise ConfigError(f"{origin}: {key} has type {type(raw).__name__}", f"expected {expected}")
    bad = False
    if key == "session":
        bad = value not in SESSION_KINDS
    elif key == "cache_policy":
        bad = value not in CACHE_POLICIES
    elif key in ("request_timeout", "resource_timeout"):
        # (the clock and the sockets cannot wait past what time_t holds; nobody needs to)
        bad = not 0 < value <= TIMEOUT_LIMITS[key]
    elif key == "max_connections_per_host":
        bad = not 1 <= value <= 64
    elif key == "retries":
        bad = not 0 <= value <= 100
    elif key == "limit":
        bad = not 1 <= value <= 200
    elif key == "country":
        bad = not (len(value) == 2 and value.isalpha())
        value = value.upper()
    elif key == "headers":
        bad = not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    elif key == "api_url":
        bad = urlsplit(value).scheme not in ("http", "https")
    elif key == "durability":
        bad = value not in DURABILITY
    elif key == "connectivity_probe_seconds":
        bad = not 0.1 <= value <= 3600
    elif key == "limit_rate":
        value = parse_rate(value)
        bad = value is None
    elif key == "connections_per_file":
        value = parse_connections(value)
        bad = value is None
    if bad:
        raise ConfigError(f"{origin}: {key} = {raw!r} is not valid", f"expected {expected}")
    return value


MAX_CONNECTIONS_PER_FILE = 16


def parse_connections(value: int | str) -> int | None:
    """`-x N|auto`: 1 to 16 connections, or auto (0). None: not a count."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return 0
        number = parse_uint(text)
        if number is None:
            return None
        value = number
    if isinstance(value, bool):
        return None
    return value if 1 <= value <= MAX_CONNECTIONS_PER_FILE else None


_RATE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_rate(value: int | str) -> int | None:
    """A rate as curl's --limit-rate takes it: bytes per second, or a number with k, M or G
    (1024-based; a decimal point allowed: 1.5M). 0 means no limit. None: not a rate."""
    if isinstance(value, int):
        return value if value >= 0 else None
    text = value.strip().lower().removesuffix("/s").removesuffix("b")
    number, unit = text[:-1], text[-1:]
    if unit not in _RATE_UNITS or not unit:
        number, unit = text, ""
    amount = parse_decimal(number)
    if amount is None or amount < 0:
        return None
    rate = int(amount * _RATE_UNITS[unit])
    return rate if rate < 1 << 50 else None


def _read_config_file(path: Path, explicit: bool) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(
                f"config file {path} does not exist", "unset HALFTUNES_CONFIG or create the file"
            ) from None
        return {}
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    import tomllib  # only when there is a file (start-up speed)

    try:
        table = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"config file {path} is not valid TOML: {exc}", "fix the file or move it away"
        ) from None
    return table


def _unknown_keys(table: dict[str, Any], path: Path) -> ConfigError | None:
    unknown = sorted(set(table) - set(CONFIG_KEYS))
    if not unknown:
        return None
    return ConfigError(
        f"config file {path}: unknown key {unknown[0]!r}", "known keys: " + ", ".join(CONFIG_KEYS)
    )


def config_file_path(environ: Any = None) -> tuple[Path, bool]:
    """The config file's path, and whether HALFTUNES_CONFIG named it explicitly."""
    env = os.environ if environ is None else environ
    if env.get("HALFTUNES_CONFIG"):
        return Path(env["HALFTUNES_CONFIG"]).expanduser(), True
    return _default_config_path(), False


def load_configuration(
    flags: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
    problems: dict[str, UsageError] | None = None,
) -> SessionConfiguration:
    """Build the effective configuration: flag > environment > config file > default.

    A bad value is an error (ConfigError), unless `problems` is given (`config show`): then
    each one is noted there by key (`file` for the file as a whole), and the key takes its
    value from the next source down, so the rest can still be shown."""
    env = os.environ if environ is None else environ
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    path, explicit = config_file_path(env)

    def noted(key: str, error: UsageError) -> None:
        if problems is None:
            raise error
        problems.setdefault(key, error)

    file_values: dict[str, Any] = {}
    try:
        file_values = _read_config_file(path, explicit)
    except ConfigError as exc:
        noted("file", exc)
    unknown = _unknown_keys(file_values, path)
    if unknown is not None:
        noted("file", unknown)

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key in CONFIG_KEYS:
        env_name = "HALFTUNES_" + key.upper()
        given: list[tuple[str, Any, str, bool]] = []
        if key in flags:
            given.append(("flag", flags[key], f"option --{key.replace('_', '-')}", True))
        if key != "headers" and env.get(env_name, "") != "":
            given.append(("env", env[env_name], f"environment variable {env_name}", True))
        if key in file_values:
            given.append(("file", file_values[key], f"config file {path}", False))
        sources[key] = "default"
        for source, raw, origin, from_text in given:
            try:
                values[key] = _coerce(key, raw, origin, from_text)
            except ConfigError as exc:
                noted(key, exc)
                continue
            sources[key] = source
            break

    kind = values.pop("session", "default")
    values.setdefault("waits_for_connectivity", kind == "background")
    for key in ("download_dir", "state_dir"):
        if key in values:  # absolute from the start: the worker runs in another directory
            values[key] = Path(os.path.abspath(Path(values[key]).expanduser()))
    if "api_url" in values:
        values["api_url"] = values["api_url"].rstrip("/")
    config = SessionConfiguration(kind=kind, **values)
    if kind == "background":
        config.identifier = "halftunes"
    config.sources = sources
    config.config_path = path
    try:
        config.check_url(config.api_url)  # the plain-http rule applies to the API too
    except UsageError as exc:
        if problems is None:
            raise
        problems.setdefault("api_url", exc)
    return config


# -- settings that travel with a background transfer -------------------------------------------
# The worker may have been started by another command, with another environment: each queued
# transfer carries what its own command was given. Header values and credentials are never
# written down: headers are re-read from the config file named here.
TRANSFER_KEYS = (
    "request_timeout",
    "resource_timeout",
    "retries",
    "allow_insecure_http",
    "durability",
    "waits_for_connectivity",
    "connectivity_probe_seconds",
    "limit_rate",
    "embed_metadata",
    "embed_artwork",
    "connections_per_file",
)
TRANSFER_ENVIRONMENT = (
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
)


def transfer_settings(config: SessionConfiguration, environ: Any = None) -> str:
    """What a background transfer needs of the command that queues it, as JSON.

    Refuses (exit 2) a proxy URL with a password: it would have to be stored."""
    env = os.environ if environ is None else environ
    captured = {name: env[name] for name in TRANSFER_ENVIRONMENT if env.get(name)}
    for name, value in captured.items():
        if "proxy" in name.lower() and urlsplit(value if "://" in value else "//" + value).password:
            raise ConfigError(
                f"{name} holds a password, which the background worker would have to store",
                "download in the foreground (without -b), or use a proxy without credentials",
            )
    config_file = None
    if config.sources.get("headers") == "file" and config.config_path is not None:
        config_file = str(config.config_path)
    return json.dumps(
        {
            "config": {key: getattr(config, key) for key in TRANSFER_KEYS},
            "config_file": config_file,
            "environment": captured,
            "umask": current_umask(),
        },
        sort_keys=True,
    )


def current_umask() -> int:
    """This process's umask, read without changing it where the system allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def with_transfer_settings(
    base: SessionConfiguration, settings: str | None
) -> tuple[SessionConfiguration, dict | None]:
    """The configuration and environment a transfer queued with `settings` runs with.

    (base, None) for a record without settings: the worker's own environment then applies."""
    if not settings:
        return base, None
    data = json.loads(settings)
    values = {k: v for k, v in data.get("config", {}).items() if k in TRANSFER_KEYS}
    headers: dict[str, str] = {}
    if data.get("config_file"):
        table = _read_config_file(Path(data["config_file"]), explicit=False)
        if "headers" in table:
            headers = _coerce(
                "headers", table["headers"], f"config file {data['config_file']}", False
            )
    if isinstance(data.get("umask"), int):
        values["file_mode"] = 0o666 & ~data["umask"]
    config = dataclasses.replace(base, headers=headers, **values)
    return config, dict(data.get("environment", {}))
