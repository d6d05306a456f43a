#!/usr/bin/env python3
"""Run-engine benchmark: prints figures; fails when a run did not succeed.

    .venv/bin/python bench/engine.py [--runs 10000] [--paced 300] [--rate 20]
                                     [--backends sqlite,postgres]

For each metadata backend it starts a release `sluice serve` (API, scheduler
and worker in one process), deploys a handler that does nothing, and measures:

- paced: `--paced` runs submitted at `--rate` per second, below what the
  worker can execute, so submit→RUNNING is sluice's own dispatch latency
  (store write, scheduler, claim, process spawn), not queueing;
- burst: `--runs` runs submitted as fast as 8 client threads can: the submit
  rate, the claim rate (runs moved to STARTING per second while the burst
  drains) and submit→RUNNING under load (dominated by queueing behind the
  worker's slots).

Latencies come from the store: run `created_at` (submit) to the attempt's
`running_at`. It also measures `sluice serve`'s cold start (spawn → first 200
from /healthz, fresh data dir) and idle RSS.
"""
import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from common import BIN, ROOT, ensure_built  # noqa: E402  (puts tests/ on the path)
from conftest import code_archive, drop_postgres_database, free_port, fresh_postgres_database  # noqa: E402
NOOP = "def handler(request, context):\n    pass\n"


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def start(data_dir, database_url=None, extra_env=None, extra_args=()):
    port = free_port()
    args = [BIN, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir), *extra_args]
    if database_url:
        args += ["--database-url", database_url]
    env = dict(os.environ, SLUICE_LOG="warn", **(extra_env or {}))
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if requests.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url, time.perf_counter() - t0
        except requests.ConnectionError:
            if proc.poll() is not None:
                raise RuntimeError("sluice serve exited")
            time.sleep(0.001)


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cli(data_dir, database_url, *args):
    cmd = [BIN, *args, "--data-dir", str(data_dir)]
    if database_url:
        cmd += ["--database-url", database_url]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def cold_start(samples=10):
    times, rss = [], []
    for _ in range(samples):
        with tempfile.TemporaryDirectory() as d:
            proc, _, took = start(Path(d))
            times.append(took * 1000)
            time.sleep(1.5)
            rss.append(rss_kib(proc.pid) / 1024)
            proc.terminate()
            proc.wait()
    return statistics.median(times), max(times), statistics.median(rss)


def latencies(data_dir, database_url, dep):
    sql = ("SELECT r.created_at, a.started_at, a.running_at FROM runs r JOIN run_attempts a "
           f"ON a.run_id = r.id AND a.attempt = 1 WHERE r.deployment_id = '{dep}'")
    if database_url:
        out = subprocess.run(["psql", database_url, "-At", "-F", ",", "-c", sql], check=True,
                             capture_output=True, text=True).stdout
        rows = [tuple(int(x) if x else None for x in line.split(",")) for line in out.splitlines() if line]
    else:
        db = sqlite3.connect(data_dir / "sluice.db")
        rows = db.execute(sql).fetchall()
        db.close()
    return rows


def wait_done(session, dep_url, n, timeout=3600):
    """Waits until n runs are final; answers how many ended in each status."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        statuses, token = {}, None
        while True:
            params = {"next_page_token": token} if token else {}
            page = session.get(f"{dep_url}/runs", params=params).json()
            for r in page["entries"]:
                statuses[r["status"]] = statuses.get(r["status"], 0) + 1
            token = page["next_page_token"]
            if not token:
                break
        final = sum(statuses.get(s, 0) for s in ("SUCCEEDED", "FAILED", "CANCELLED", "REJECTED"))
        if final >= n:
            return statuses
        time.sleep(2)
    raise RuntimeError("runs did not finish")


def deployment(session, url, org):
    base = f"{url}/organizations/{org}/deployments"
    dep = session.post(base, json={"name": "noop-" + uuid.uuid4().hex[:6]}).json()["deployment_id"]
    ver = session.post(f"{base}/{dep}/versions",
                       json={"version": "1", "handler": "main:handler", "image": "python"}).json()
    requests.put(ver["upload_url"], data=code_archive({"main.py": NOOP})).raise_for_status()
    return dep, f"{base}/{dep}", ver["version_id"]


def bench_backend(name, runs, paced, rate):
    with tempfile.TemporaryDirectory() as d:
        data_dir = Path(d)
        database_url = fresh_postgres_database() if name == "postgres" else None
        proc, url, _ = start(data_dir, database_url, {"SLUICE_PAGE_SIZE": "1000"})
        try:
            org = cli(data_dir, database_url, "org", "create", "bench", "--json")["organization_id"]
            user = cli(data_dir, database_url, "user", "create", "--org", org, "b@example.com", "--json")
            session = requests.Session()
            session.auth = (f"user-{user['user_id']}", user["personal_access_token"])
            body = lambda ver: {"version_id": ver, "retry_count": 0}  # noqa: E731

            # Paced: below capacity.
            dep, dep_url, ver = deployment(session, url, org)
            t0 = time.perf_counter()
            for i in range(paced):
                session.post(f"{dep_url}/runs", json=body(ver)).raise_for_status()
                pause = t0 + (i + 1) / rate - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
            wait_done(session, dep_url, paced)
            rows = latencies(data_dir, database_url, dep)
            paced_ms = [(running - created) / 1000 for created, _, running in rows if running]

            # Burst.
            dep, dep_url, ver = deployment(session, url, org)
            local = threading.local()

            def submit(_):
                if not hasattr(local, "s"):
                    local.s = requests.Session()
                    local.s.auth = session.auth
                local.s.post(f"{dep_url}/runs", json=body(ver)).raise_for_status()

            t0 = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(submit, range(runs)))
            submit_s = time.perf_counter() - t0
            statuses = wait_done(session, dep_url, runs)
            rows = latencies(data_dir, database_url, dep)
            burst_ms = [(running - created) / 1000 for created, _, running in rows if running]
            claims = sorted(started for _, started, _ in rows)
            claim_span = (claims[-1] - claims[0]) / 1e6 if len(claims) > 1 else float("nan")
            return {
                "paced_p50": percentile(paced_ms, 50), "paced_p99": percentile(paced_ms, 99),
                "submit_rate": runs / submit_s, "claim_rate": len(claims) / claim_span,
                "burst_p50": percentile(burst_ms, 50), "burst_p99": percentile(burst_ms, 99),
                "statuses": statuses,
            }
        finally:
            proc.terminate()
            proc.wait()
            if database_url:
                drop_postgres_database(database_url)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10000)
    ap.add_argument("--paced", type=int, default=300)
    ap.add_argument("--rate", type=float, default=20)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--cold-starts", type=int, default=10)
    args = ap.parse_args()
    ensure_built()

    p50, worst, rss = cold_start(args.cold_starts)
    print(f"sluice serve: cold start median {p50:.1f} ms (max {worst:.1f} ms), idle RSS {rss:.1f} MiB")
    print(f"{'backend':10} {'paced p50':>10} {'paced p99':>10} {'submit/s':>9} {'claim/s':>8} "
          f"{'burst p50':>10} {'burst p99':>10}")
    for name in args.backends.split(","):
        r = bench_backend(name, args.runs, args.paced, args.rate)
        if r["statuses"].get("SUCCEEDED", 0) != args.runs:
            raise SystemExit(f"{name}: not every run succeeded: {r['statuses']}")
        print(f"{name:10} {r['paced_p50']:8.2f}ms {r['paced_p99']:8.2f}ms {r['submit_rate']:9.0f} "
              f"{r['claim_rate']:8.1f} {r['burst_p50']:8.0f}ms {r['burst_p99']:8.0f}ms  {r['statuses']}", flush=True)
    print(f"(paced: {args.paced} runs at {args.rate}/s; burst: {args.runs} runs; latency is submit → RUNNING)")


if __name__ == "__main__":
    main()
