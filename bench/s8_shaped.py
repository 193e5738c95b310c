"""S8: a shaped link. Run by bench.py as `unshare -n python bench/s8_shaped.py RUNS`: inside a
private network namespace it brings loopback up, shapes it with a token bucket (tc tbf, 400
Mbit/s; netem is not available on these kernels, so the catalog adds 40 ms before each first
byte), serves 300 previews of 1 MiB and one 200 MiB file, and times each tool. Prints JSON.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
spec = importlib.util.spec_from_file_location("bench_main", ROOT / "bench" / "bench.py")
bench = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
spec.loader.exec_module(bench)  # type: ignore[union-attr]

from halftunes_cli.testing.catalog import CatalogServer  # noqa: E402 - after the path is set

RATE = "400mbit"
DELAY = 0.040
MIB = 1 << 20


def shape() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(
        [
            "tc",
            "qdisc",
            "add",
            "dev",
            "lo",
            "root",
            "tbf",
            "rate",
            RATE,
            "burst",
            "256kb",
            "latency",
            "50ms",
        ],
        check=True,
    )


def tools(n: int, work: Path, urls: list[str]) -> dict:
    listing = work / "urls.txt"
    listing.write_text("\n".join(urls) + "\n")
    aria = work / "aria.txt"
    aria.write_text("".join(f"{u}\n  out=f{i}\n" for i, u in enumerate(urls)))
    curl_cfg = work / "curl.cfg"
    curl_cfg.write_text("".join(f'url = "{u}"\noutput = "f{i}"\n' for i, u in enumerate(urls)))
    out: dict = {
        f"halftunes ({n} per host)": lambda d: (
            [bench.HALFTUNES, "--session", "ephemeral", "-q", "download", *urls, "-P", str(d)],
            {"HALFTUNES_MAX_CONNECTIONS_PER_HOST": str(n)},
        ),
    }
    if shutil.which("aria2c"):
        out[f"aria2c -j {n}"] = lambda d: (
            ["aria2c", "-q", "-j", str(n), "-i", str(aria), "-d", str(d), "--file-allocation=none"],
            {},
        )
    if shutil.which("curl"):
        out[f"curl -Z --parallel-max {n}"] = lambda d: (
            ["sh", "-c", f"cd '{d}' && curl -sS -Z --parallel-max {n} -K '{curl_cfg}'"],
            {},
        )
    if n == 6 and shutil.which("wget"):
        out["wget -i"] = lambda d: (["wget", "-q", "-i", str(listing), "-P", str(d), "-nd"], {})
    if n == 6 and shutil.which("curl"):
        out["xargs -P 6 curl"] = lambda d: (
            [
                "sh",
                "-c",
                f"cd '{d}' && awk '{{print NR\" \"$0}}' '{listing}' | "
                f"xargs -P 6 -n 2 sh -c 'curl -sS -o f$0 $1'",
            ],
            {},
        )
    return out


def link_rate(server: CatalogServer, since: float) -> float | None:
    """MiB/s the server sent bodies at, from the first body byte to the last, as the server
    saw it (its own clock; the fixed first-byte delay excluded): how much of the link a tool
    used, apart from its start-up."""
    sent = [
        e
        for e in server.state.log
        if e["time"] >= since and e["bytes_sent"] and e["ended"] is not None
    ]
    if not sent:
        return None
    seconds = max(e["ended"] for e in sent) - min(e["time"] for e in sent) - DELAY
    return sum(e["bytes_sent"] for e in sent) / MIB / seconds if seconds > 0 else None


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    shape()
    server = CatalogServer(preview_size=MIB, count=340).start()
    server.state.first_byte_delay = DELAY
    work = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("/tmp/halftunes-s8")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    previews = [t["previewUrl"] for t in server.state.tracks.values() if "previewUrl" in t][:300]
    big = [f"{server.url}/files/big.bin?size={200 * MIB}&seed=8"]
    results: dict = {"link": f"{RATE}, {int(DELAY * 1000)} ms before each first byte"}
    assert len(previews) == 300, len(previews)
    for label, urls, total in (
        ("300 previews of 1 MiB", previews, 300 * MIB),
        ("one 200 MiB file", big, 200 * MIB),
    ):
        rows: dict = {}
        for n in (6, 16):
            for name, build in tools(n, work, urls).items():
                samples = []
                for run in range(runs + 1):
                    d = work / "out"
                    shutil.rmtree(d, ignore_errors=True)
                    d.mkdir()
                    cmd, extra = build(d)
                    before = server.state.connections
                    began = time.time()
                    sample = bench.measure(cmd, env={**bench.os.environ, **extra})
                    got = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
                    if got != total:
                        raise RuntimeError(f"S8 {name}: {got} of {total} bytes")
                    sample["connections"] = server.state.connections - before
                    sample["link_mib_s"] = link_rate(server, began)
                    if run > 0:
                        samples.append(sample)
                summary = bench.summarize(samples, total)
                summary["connections"] = max(s["connections"] for s in samples)
                rates = sorted(s["link_mib_s"] for s in samples if s["link_mib_s"])
                summary["link_mib_s"] = rates[len(rates) // 2] if rates else None
                rows[name] = summary
                print(
                    f"  S8 {label}: {name} {summary['wall']['median']:.2f}s, "
                    f"{summary['connections']} connections",
                    file=sys.stderr,
                    flush=True,
                )
        results[label] = rows
    server.stop()
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
