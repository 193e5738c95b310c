"""`download -w/--write-out FORMAT`: a line per download made of curl's --write-out variables
(`%{time_total}`, `%{remote_ip}`, `%{json}`, ...) and halftunes' own (`%{id}`, `%{status}`,
`%{errormsg}`). A template is checked whole before anything is downloaded."""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import UsageError

# The variables, in the order %{json} gives them (curl's names, then halftunes' own).
VARIABLES = (
    "time_namelookup",
    "time_connect",
    "time_appconnect",
    "time_pretransfer",
    "time_redirect",
    "time_starttransfer",
    "time_total",
    "size_download",
    "speed_download",
    "num_connects",
    "num_redirects",
    "num_retries",
    "http_code",
    "response_code",
    "http_version",
    "remote_ip",
    "remote_port",
    "local_ip",
    "local_port",
    "url_effective",
    "filename_effective",
    "id",
    "status",
    "errormsg",
)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\"}
_TOKEN = re.compile(r"%\{([^}]*)\}|%%|\\([nrt\\])|%\{|[^%\\]+|.", re.DOTALL)


class WriteOut:
    """A parsed template: literal text and variable names."""

    def __init__(self, template: str):
        self.parts: list[tuple[bool, str]] = []  # (is a variable, text or name)
        for match in _TOKEN.finditer(template):
            text = match.group(0)
            if match.group(1) is not None:
                name = match.group(1).strip()
                if name not in VARIABLES and name != "json":
                    raise UsageError(
                        f"unknown --write-out variable %{{{name}}}",
                        "known: " + ", ".join(VARIABLES) + ", json",
                    )
                self.parts.append((True, name))
            elif text == "%{":
                raise UsageError("--write-out has a %{ without its closing }")
            elif text == "%%":
                self.parts.append((False, "%"))
            elif match.group(2) is not None:
                self.parts.append((False, _ESCAPES[match.group(2)]))
            else:
                self.parts.append((False, text))

    def render(self, variables: dict[str, Any]) -> str:
        out = []
        for is_variable, text in self.parts:
            if not is_variable:
                out.append(text)
            elif text == "json":
                out.append(json.dumps({k: variables.get(k) for k in VARIABLES}))
            else:
                out.append(_shown(variables.get(text)))
        return "".join(out)


def _shown(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)
