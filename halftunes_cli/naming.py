"""Safe, portable file names for downloads (Linux, macOS and Windows rules at once)."""

from __future__ import annotations

import os
import re
import unicodedata
from urllib.parse import unquote, urlsplit

MAX_NAME_BYTES = 200
_WINDOWS_RESERVED = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    "CONIN$",
    "CONOUT$",
    *(f"COM{i}" for i in range(10)),
    *(f"LPT{i}" for i in range(10)),
    "COM¹",
    "COM²",
    "COM³",
    "LPT¹",
    "LPT²",
    "LPT³",
}
_FORBIDDEN = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]')
_EXT_RE = re.compile(r"^\.[A-Za-z0-9]{1,8}$")


def _clean(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    # Control and format characters (incl. RTL overrides that disguise extensions) go.
    text = "".join(
        " " if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in text
    )
    text = _FORBIDDEN.sub("_", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text


def _undot(text: str) -> str:
    """No leading dots (hidden files, `..`) and no trailing dots or spaces (Windows)."""
    text = text.strip(" ")
    if text.startswith("."):
        text = "_" + text.lstrip(".")
    return text.rstrip(" .")


def _truncate_utf8(text: str, max_bytes: int) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", errors="ignore")


def safe_extension(ext: str) -> str:
    return ext.lower() if _EXT_RE.match(ext or "") else ""


def safe_filename(stem: str, ext: str = "", suffix: str = "", fallback: str = "download") -> str:
    """`stem + suffix + ext` made safe: no separators, no `..`, no reserved names, <= 200 bytes."""
    ext = safe_extension(ext)
    stem = _clean(stem)
    suffix = _FORBIDDEN.sub("_", suffix) if suffix else ""
    stem = _undot(stem)
    if not stem:
        stem = fallback
    budget = MAX_NAME_BYTES - len((suffix + ext).encode("utf-8"))
    stem = _truncate_utf8(stem, budget).rstrip(" .")
    if not stem:
        stem = fallback
    if stem.split(".")[0].strip().upper() in _WINDOWS_RESERVED:
        stem = "_" + stem
        stem = _truncate_utf8(stem, budget).rstrip(" .")
    return stem + suffix + ext


def extension_from_url(url: str) -> str:
    path = unquote(urlsplit(url).path)
    last = path.rsplit("/", 1)[-1]
    _, ext = os.path.splitext(last)
    return safe_extension(ext)


def track_filename(
    artist: str | None, title: str | None, preview_url: str, suffix: str = ""
) -> str:
    artist = _undot(_clean(artist or ""))
    title = _undot(_clean(title or ""))
    stem = f"{artist} - {title}" if artist and title else (title or artist or "track")
    return safe_filename(stem, extension_from_url(preview_url) or ".m4a", suffix)


def url_filename(url: str, suffix: str = "") -> str:
    path = unquote(urlsplit(url).path)
    last = path.rstrip("/").rsplit("/", 1)[-1] if path.strip("/") else ""
    stem, ext = os.path.splitext(last)
    if not safe_extension(ext):
        stem, ext = last, ""
    host = urlsplit(url).hostname or "download"
    return safe_filename(stem, ext, suffix, fallback=_clean(host) or "download")


# -- -o templates ------------------------------------------------------------------------------
TEMPLATE_FIELDS = ("artist", "title", "album", "collection", "id", "ext")
_FIELD = re.compile(r"\{([^{}]*)\}")


def template_fields(template: str) -> list[str]:
    """The fields a -o value uses; raises ValueError naming an unknown one."""
    found = _FIELD.findall(template)
    for name in found:
        if name not in TEMPLATE_FIELDS:
            raise ValueError(f"unknown field {{{name}}}")
    return found


def fill_template(template: str, values: dict[str, str], suffix: str = "") -> str:
    """`template` with its fields filled, each value made safe (no separators, no `..`), so a
    `/` in the template, and only there, makes subfolders. `suffix` goes before the last
    component's extension (the ` (trackId)` of a name taken by another track)."""
    parts = template.split("/")
    out = []
    for i, part in enumerate(parts):
        has_fields = bool(_FIELD.search(part))
        filled = _FIELD.sub(lambda m: _undot(_clean(values.get(m[1], ""))), part)
        if i == len(parts) - 1:
            stem, ext = os.path.splitext(filled)
            if not safe_extension(ext):
                stem, ext = filled, ""
            out.append(safe_filename(stem, ext, suffix))
        elif has_fields:
            out.append(safe_filename(filled, fallback="_"))
        else:
            out.append(part)  # the user's own folder names, as typed
    return "/".join(out)
