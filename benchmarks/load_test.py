"""Load test of examples/serve.py on loopback: N concurrent clients send a bounded number of
next-character requests; reports throughput, p50/p99 latency, failures and the server's memory.

    python benchmarks/load_test.py [--clients 16] [--requests 100] [--checkpoint char_lm.npz]

Without --checkpoint it first trains a small char-LM (examples/char_lm.py, 100 steps) in a
temporary folder. Needs the serve extra (Starlette, uvicorn, httpx).
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run(clients=16, requests=100, checkpoint=None):
    import httpx

    tmp = tempfile.mkdtemp()
    if checkpoint is None:
        checkpoint = os.path.join(tmp, "lm.npz")
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "examples" / "char_lm.py"),
                "--steps",
                "100",
                "--sample",
                "0",
                "--checkpoint",
                checkpoint,
            ],
            check=True,
            capture_output=True,
            cwd=tmp,
        )
    import lnnumba

    vocab = lnnumba.load_checkpoint(checkpoint)[2]["vocab"]
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "examples" / "serve.py"),
            "--checkpoint",
            checkpoint,
            "--port",
            str(port),
        ]
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):  # wait for the server, at most 20 s
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise RuntimeError("the server did not start")
        rng = np.random.default_rng(0)
        letters = [ch for ch in vocab if ch.isalnum() or ch in " ._("]
        prompts = ["".join(rng.choice(letters, rng.integers(20, 200))) for _ in range(256)]
        with httpx.Client() as c:  # warm-up: compile, fill caches
            for p in prompts[:20]:
                c.post(url + "/v1/next", json={"text": p})
        rss0 = rss_mb(server.pid)
        lat, fails = [], []
        lock = threading.Lock()

        def client(k, lo, hi):
            with httpx.Client(timeout=30) as c:
                for i in range(lo, hi):
                    t0 = time.perf_counter()
                    r = c.post(url + "/v1/next", json={"text": prompts[(k * 7 + i) % 256]})
                    dt = time.perf_counter() - t0
                    with lock:
                        (lat if r.status_code == 200 else fails).append(dt)

        # the run in four rounds, the server's memory taken after each: memory that is stable
        # stops growing after the first round (which meets the first concurrent batches)
        rss = []
        wall = 0.0
        for q in range(4):
            lo, hi = q * requests // 4, (q + 1) * requests // 4
            t0 = time.perf_counter()
            threads = [threading.Thread(target=client, args=(k, lo, hi)) for k in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall += time.perf_counter() - t0
            rss.append(rss_mb(server.pid))
        rss1 = rss[-1]
        metrics = httpx.get(url + "/metrics").json()
    finally:
        server.terminate()
        server.wait(10)
    lat.sort()
    return {
        "clients": clients,
        "requests": clients * requests,
        "failed": len(fails),
        "throughput_rps": len(lat) / wall,
        "p50_ms": 1e3 * statistics.median(lat),
        "p99_ms": 1e3 * lat[int(0.99 * (len(lat) - 1))],
        "rss_mb_before": rss0,
        "rss_mb_after": rss1,
        "rss_mb_rounds": rss,
        "batches": metrics["batches"],
    }


def describe(r):
    return (
        f"{r['clients']} clients, {r['requests']} requests: {r['throughput_rps']:.0f} "
        f"requests/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, {r['failed']} "
        f"failed, {r['batches']} model batches; server memory {r['rss_mb_before']:.0f} MB "
        f"before, {r['rss_mb_after']:.0f} MB after"
        + (
            " (after each quarter of the run: "
            + ", ".join(f"{m:.0f}" for m in r["rss_mb_rounds"])
            + " MB)"
            if "rss_mb_rounds" in r
            else ""
        )
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=100, help="per client")
    ap.add_argument("--checkpoint")
    args = ap.parse_args(argv)
    print(describe(run(args.clients, args.requests, args.checkpoint)))


if __name__ == "__main__":
    main()
