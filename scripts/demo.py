"""`make demo`: the HalfTunes job against the offline catalog, with no internet needed.

Starts the catalog server on a free loopback port, then searches, downloads a preview with
progress, pauses it from a second process, resumes it and lists the result.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).with_name("halftunes")


def step(title: str, *args: str, env: dict, wait: bool = True):
    print(f"\n\033[1m$ halftunes {' '.join(args)}\033[0m   # {title}", flush=True)
    proc = subprocess.Popen([str(BIN), *args], env=env)
    if wait:
        proc.wait()
    return proc


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="halftunes-demo-"))
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "halftunes_cli.catalog",
            "--port",
            "0",
            "--preview-size",
            "3000000",
            "--throttle",
            "600000",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = server.stdout.readline().strip()
        env = {
            **os.environ,
            "HALFTUNES_API_URL": url,
            "HALFTUNES_STATE_DIR": str(work / "state"),
            "HALFTUNES_DOWNLOAD_DIR": str(work / "downloads"),
        }
        print(f"catalog server: {url}   state and downloads: {work}")
        step("search the catalog", "search", "jack johnson", "--limit", "5", env=env)
        download = step(
            "download a 3 MB preview (throttled)", "download", "1000001", env=env, wait=False
        )
        time.sleep(2.5)
        step("pause it from a second process", "pause", "1000001", env=env)
        download.wait()
        step("the partial is kept", "list", env=env)
        req = urllib.request.Request(
            f"{url}/_admin/throttle", data=json.dumps({"bps": None}).encode(), method="POST"
        )
        urllib.request.urlopen(req).read()
        step("resume from the checkpoint (Range + If-Range)", "resume", "1000001", env=env)
        step("done", "list", env=env)
        log = json.loads(urllib.request.urlopen(f"{url}/_admin/log").read())
        ranges = [e["range"] for e in log if e["path"].startswith("/previews/")]
        print(f"\nRange headers the server saw: {ranges}")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)
        print(f"(removed {work})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)  # (the folder is removed on the way out)
