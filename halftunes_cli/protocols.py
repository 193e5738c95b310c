"""Protocol handlers mounted by URL prefix (the NSURLProtocol analogue); `file://` ships."""

from __future__ import annotations

import io
import os
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote, urlsplit

from requests.adapters import BaseAdapter
from requests.models import PreparedRequest, Response
from urllib3 import HTTPResponse

from .headers import parse_uint


class FileAdapter(BaseAdapter):
    """Serves file:// URLs with the same Range / If-Range / ETag rules as an HTTP server."""

    def send(  # type: ignore[override]  # (requests' own signature is looser than its stub's)
        self, request: PreparedRequest, stream: bool = False, **kwargs: Any
    ) -> Response:
        path = unquote(urlsplit(request.url or "").path)
        response = Response()
        response.url = request.url or ""
        response.request = request
        if request.method not in ("GET", "HEAD"):
            return self._status(response, 405)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return self._status(response, 404)
        except (PermissionError, IsADirectoryError):
            return self._status(response, 403)
        f = os.fdopen(fd, "rb")
        st = os.fstat(f.fileno())
        if not os.path.isfile(path):
            f.close()
            return self._status(response, 403)
        size = st.st_size
        etag = f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{size:x}"'
        headers = {
            "ETag": etag,
            "Last-Modified": formatdate(st.st_mtime, usegmt=True),
            "Accept-Ranges": "bytes",
        }
        rng = request.headers.get("Range")
        if_range = request.headers.get("If-Range")
        if rng and if_range is not None and if_range not in (etag, headers["Last-Modified"]):
            rng = None
        start, status = 0, 200
        first = parse_uint(rng[6:].rstrip("-")) if rng and rng.startswith("bytes=") else None
        if first is not None:
            start = first
            if start >= size:
                f.close()
                headers["Content-Range"] = f"bytes */{size}"
                return self._status(response, 416, headers)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        f.seek(start)
        headers["Content-Length"] = str(size - start)
        response.status_code = status
        response.headers.update(headers)
        response.raw = HTTPResponse(
            body=f, headers=headers, status=status, preload_content=False, decode_content=False
        )
        return response

    @staticmethod
    def _status(response: Response, status: int, headers: dict | None = None) -> Response:
        response.status_code = status
        response.headers.update(headers or {})
        response.headers["Content-Length"] = "0"
        response.raw = HTTPResponse(body=io.BytesIO(b""), status=status, preload_content=False)
        return response

    def close(self) -> None:
        pass
