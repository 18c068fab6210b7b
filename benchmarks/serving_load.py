"""HTTP load test against a real ``marl-two-tower serve`` process on 127.0.0.1.

Starts the server as a subprocess on a free port (``--bundle`` or ``--checkpoint``),
waits for ``/health``, then sends a fixed number of requests (``--requests``,
default 5,000) from ``--concurrency`` (default 32) concurrent keep-alive
connections, and stops the server. The default client is a minimal HTTP/1.1
keep-alive client on asyncio streams (~0.1 ms CPU per request), so that on a small
machine the measurement is not dominated by the load generator; ``--client httpx``
uses httpx's async client instead (~3 ms CPU per request here). The workload is deterministic
(seed 0): by default 90% ``GET /recommend`` for random known users, 5% unknown
users (cold start, half of them with a demographic), 5% ``POST /recommend``
batches of 8 users with one exclusion each. Every response must be 200 with a
full list; anything else (status, short list, timeout, connection error) is
counted as an error. Latency is per request from send to full response, on the
client; client and server share this machine's cores.

    python benchmarks/serving_load.py --bundle /tmp/ml100k_bundle --requests 5000 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx
import numpy as np


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its live descendants (the
    uvicorn workers of ``serve --workers N``; Linux /proc), NaN elsewhere."""
    stats = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
                stats[int(d.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
            except (OSError, IndexError, ValueError):
                continue
    if pid not in stats:
        return float("nan")
    tree, grew = {pid}, True
    while grew:  # add children of the tree until none is left
        new = {p for p, (parent, _) in stats.items() if parent in tree} - tree
        tree |= new
        grew = bool(new)
    return sum(stats[p][1] for p in tree) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, port: int, log_path: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "marl_two_tower.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--bundle", args.bundle] if args.bundle else ["--checkpoint", args.checkpoint]
    for o in args.overrides:
        cmd += ["--set", o]
    cmd += ["--workers", str(args.workers)]
    log = open(log_path, "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def wait_healthy(base: str, proc: subprocess.Popen, timeout: float = 180.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        try:
            r = httpx.get(base + "/health", timeout=2.0)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become healthy in time")


def workload(n: int, user_ids: list, k: int, seed: int, p_cold: float, p_batch: float,
             features: dict[str, list[str]]) -> list[tuple[str, str, dict]]:
    """(kind, method, request kwargs) for n requests."""
    rng = np.random.default_rng(seed)
    feat_names = sorted(features)
    out = []
    for j in range(n):
        x = rng.random()
        if x < p_batch:
            users = [{"user_id": user_ids[int(u)], "exclude": [int(rng.integers(1, 100))]}
                     for u in rng.integers(0, len(user_ids), 8)]
            out.append(("batch8", "POST", {"url": "/recommend", "json": {"users": users, "k": k}}))
        elif x < p_batch + p_cold:
            params: dict = {"user_id": f"new-user-{j}", "k": k}
            if feat_names and rng.random() < 0.5:
                name = feat_names[int(rng.integers(len(feat_names)))]
                params["feature"] = f"{name}:{features[name][int(rng.integers(len(features[name])))]}"
            out.append(("cold", "GET", {"url": "/recommend", "params": params}))
        else:
            uid = user_ids[int(rng.integers(0, len(user_ids)))]
            out.append(("known", "GET", {"url": "/recommend", "params": {"user_id": uid, "k": k}}))
    return out


class RawConnection:
    """One keep-alive HTTP/1.1 connection: request line + headers out, status line,
    headers and a Content-Length body in (what uvicorn sends for JSON responses)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, url: str, params: dict | None = None,
                      json_body: object = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        path = url + ("?" + urlencode(params, doseq=True) if params else "")
        body = json.dumps(json_body).encode() if json_body is not None else b""
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if json_body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        await self.writer.drain()
        status = int((await self.reader.readline()).split()[1])
        length = None
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise ConnectionError("response without Content-Length")
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def check(kind: str, status: int, payload: bytes, k: int) -> bool:
    if status != 200:
        return False
    body = json.loads(payload)
    if kind == "batch8":
        return len(body["results"]) == 8 and all(len(x["items"]) == k for x in body["results"])
    return len(body["items"]) == k and body["cold_start"] == (kind == "cold")


async def run_load(base: str, reqs: list[tuple[str, str, dict]], concurrency: int, k: int,
                   timeout: float, client: str = "raw") -> tuple[np.ndarray, np.ndarray, list[str], float]:
    """Send ``reqs`` from ``concurrency`` workers, each on its own keep-alive connection."""
    lat = np.full(len(reqs), np.nan)
    ok = np.zeros(len(reqs), dtype=bool)
    errors: list[str] = []
    it = iter(range(len(reqs)))
    host, port = base.rsplit("//", 1)[1].split(":")

    async def send_raw(conn: RawConnection, method: str, kw: dict) -> tuple[int, bytes]:
        return await asyncio.wait_for(conn.request(method, kw["url"], kw.get("params"), kw.get("json")),
                                      timeout)

    async def worker(hx: httpx.AsyncClient | None) -> None:
        conn = RawConnection(host, int(port))
        for j in it:
            kind, method, kw = reqs[j]
            t0 = time.perf_counter()
            try:
                if hx is not None:
                    r = await hx.request(method, **kw)
                    status, payload = r.status_code, r.content
                else:
                    status, payload = await send_raw(conn, method, kw)
                lat[j] = (time.perf_counter() - t0) * 1e3
                ok[j] = check(kind, status, payload, k)
                if not ok[j] and len(errors) < 5:
                    errors.append(f"{kind}: HTTP {status} {payload[:200]!r}")
            except (httpx.HTTPError, OSError, asyncio.TimeoutError, ValueError, IndexError) as e:
                lat[j] = (time.perf_counter() - t0) * 1e3
                conn.close()  # reconnect for the next request
                if len(errors) < 5:
                    errors.append(f"{kind}: {type(e).__name__}: {e}")
        conn.close()

    t0 = time.perf_counter()
    if client == "httpx":
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as hx:
            await asyncio.gather(*(worker(hx) for _ in range(concurrency)))
    else:
        await asyncio.gather(*(worker(None) for _ in range(concurrency)))
    return lat, ok, errors, time.perf_counter() - t0


def render_table(path: Path) -> str:
    """The Markdown table of docs/speed.md from the runs ``--out`` appended to ``path``."""
    lines = ["| workers | load avg (start) | throughput req/s | p50 ms | p99 ms | max ms | errors "
             "| server CPU / request | beside it |", "|---|---|---|---|---|---|---|---|---|"]
    for r in json.loads(path.read_text()):
        g = r["groups"]["all"]
        lines.append(f"| {r['workers']} | {r['load_average_start']:.1f} | {r['throughput_rps']:,.0f} "
                     f"| {g['p50_ms']:.1f} | {g['p99_ms']:.1f} | {g['max_ms']:.1f} | {r['errors']} "
                     f"| {r['server_cpu_ms_per_request']:.2f} ms | {r.get('note', 'nothing')} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--bundle")
    src.add_argument("--checkpoint")
    p.add_argument("--table", type=Path, metavar="JSON",
                   help="print the Markdown table of the runs in JSON (written by --out) and exit")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--cold", type=float, default=0.05, help="share of unknown-user requests")
    p.add_argument("--batch", type=float, default=0.05, help="share of POST batches of 8 users")
    p.add_argument("--warmup", type=int, default=200, help="untimed requests first")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout (s)")
    p.add_argument("--client", choices=["raw", "httpx"], default="raw", help="load generator")
    p.add_argument("--workers", type=int, default=1, help="`serve --workers` (uvicorn processes)")
    p.add_argument("--out", type=Path, default=None,
                   help="append this run's numbers to a JSON file (a list of runs; default: none)")
    args = p.parse_args()
    if args.table is not None:  # render only: no server
        print(render_table(args.table))
        return
    if args.bundle is None and args.checkpoint is None:
        p.error("one of --bundle or --checkpoint is required (or --table JSON)")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = Path(tempfile.gettempdir()) / f"serving_load_{port}.log"
    proc = start_server(args, port, log_path)
    try:
        t0 = time.time()
        health = wait_healthy(base, proc)
        print(f"server up in {time.time() - t0:.1f} s: {health['bundle']['dataset']} "
              f"({health['n_users']} users, {health['n_items']} items), index {health['index']}; "
              f"log {log_path}")
        # known users: sample original ids through the API's own id space
        from marl_two_tower.serving.commands import build_recommender

        rec = build_recommender(args.bundle, args.checkpoint, args.overrides)
        user_ids = rec.user_ids
        features = health["cold_start"]["features"]
        warm = workload(args.warmup, user_ids, args.k, 1, args.cold, args.batch, features)
        asyncio.run(run_load(base, warm, args.concurrency, args.k, args.timeout, args.client))
        reqs = workload(args.requests, user_ids, args.k, 0, args.cold, args.batch, features)
        load0 = os.getloadavg()[0]
        srv0, cli0 = cpu_seconds(proc.pid), time.process_time()
        lat, ok, errors, wall = asyncio.run(run_load(base, reqs, args.concurrency, args.k, args.timeout,
                                                     args.client))
        srv_cpu, cli_cpu = cpu_seconds(proc.pid) - srv0, time.process_time() - cli0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    kinds = np.array([r[0] for r in reqs])
    print(f"\n## HTTP load: {args.requests} requests, concurrency {args.concurrency}, k={args.k}, "
          f"client {args.client}, {args.workers} server worker(s), "
          f"load average at start {load0:.1f} on {os.cpu_count()} cores\n")
    print("| requests | n | errors | p50 ms | p95 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|")
    groups = [("all", np.ones(len(reqs), bool)), ("GET known user", kinds == "known"),
              ("GET unknown user (cold start)", kinds == "cold"), ("POST batch of 8", kinds == "batch8")]
    record = {"requests": args.requests, "concurrency": args.concurrency, "k": args.k,
              "client": args.client, "workers": args.workers, "load_average_start": round(load0, 2),
              "load_average_end": round(os.getloadavg()[0], 2), "cores": os.cpu_count(),
              "source": args.bundle or args.checkpoint, "groups": {}}
    for name, m in groups:
        if not m.any():
            continue
        v = lat[m]
        record["groups"][name] = {"n": int(m.sum()), "errors": int((~ok[m]).sum()),
                                  **{f"p{q}_ms": float(np.percentile(v, q)) for q in (50, 95, 99)},
                                  "max_ms": float(v.max())}
        print(f"| {name} | {int(m.sum())} | {int((~ok[m]).sum())} | {np.percentile(v, 50):.1f} | "
              f"{np.percentile(v, 95):.1f} | {np.percentile(v, 99):.1f} | {v.max():.1f} |")
    users = int((kinds == "known").sum() + (kinds == "cold").sum() + 8 * (kinds == "batch8").sum())
    print(f"\nthroughput: {len(reqs) / wall:,.0f} requests/s ({users / wall:,.0f} user lists/s) "
          f"over {wall:.1f} s; errors: {int((~ok).sum())}")
    n = len(reqs)
    print(f"CPU per request: server {srv_cpu / n * 1e3:.2f} ms, client {cli_cpu / n * 1e3:.2f} ms "
          "(wall-clock latencies include waiting for a core on a shared machine)")
    for e in errors:
        print("  error:", e)
    if args.out is not None:
        record.update(throughput_rps=len(reqs) / wall, user_lists_per_s=users / wall, wall_s=wall,
                      errors=int((~ok).sum()), server_cpu_ms_per_request=srv_cpu / n * 1e3,
                      client_cpu_ms_per_request=cli_cpu / n * 1e3,
                      command="benchmarks/serving_load.py " + " ".join(sys.argv[1:]))
        runs = json.loads(args.out.read_text()) if args.out.exists() else []
        runs.append(record)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(runs, indent=1) + "\n")
        tmp.replace(args.out)  # atomic: a failed run never leaves half a file
        print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
