#!/usr/bin/env python3
"""Run-engine benchmark: prints figures; fails when a run did not succeed.

    .venv/bin/python bench/engine.py [--runs 10000] [--pandas-runs 3000]
        [--fresh-runs 500] [--repeat 3] [--paced 300] [--rate 20]
        [--warm-versions 10] [--backends sqlite,postgres]

For each metadata backend it starts a release `sluice serve` (API, scheduler
and worker in one process) and measures, each burst `--repeat` times with
the backends' order alternated (medians printed):

- paced: `--paced` runs of a handler that does nothing, submitted at
  `--rate` per second, below what the worker can execute, so submit→RUNNING
  is sluice's own dispatch latency (store write, wake-up, claim, fork), not
  queueing;
- burst: `--runs` runs of that handler submitted as fast as 8 client
  threads can (each over one kept-alive connection, with http.client,
  which spends a fraction of requests' CPU per call: the client shares the
  cores); figures: runs claimed and finished per second (runs / first
  claim → last finish), submit→RUNNING p50/p99 (dominated by queueing),
  and the CPU each part spent per run (`sluice serve`, the version's fork
  server, the runs' processes, PostgreSQL, the client: from /proc);
- the same with a handler module that imports pandas (`--pandas-runs`);
- the same no-op burst in a fresh interpreter per run
  (SLUICE_FRESH_INTERPRETER=1, `--fresh-runs`): what every run cost before
  the fork servers;
- warm versions: one pandas run on each of `--warm-versions` more versions,
  then the server's RSS and the proportional set size (PSS: shared pages
  split between the processes that share them) and RSS sum of every warm
  interpreter it holds — those versions' and the ones the bursts above
  left warm.

Each version is warmed by one run before its burst: the figures are the
steady state, the first run's import (once per version and worker) is not in
them. Latencies come from the store: run `created_at` (submit) to the
attempt's `running_at`, finish from its `finished_at`. It also measures
`sluice serve`'s cold start (spawn → first 200 from /healthz, fresh data
dir) and idle RSS.
"""
import argparse
import base64
import http.client
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from common import BIN, ensure_built, proc_kib  # noqa: E402  (puts tests/ on the path)
from conftest import code_archive, drop_postgres_database, free_port, fresh_postgres_database  # noqa: E402
NOOP = "def handler(request, context):\n    pass\n"
PANDAS = "import pandas\n\ndef handler(request, context):\n    pass\n"


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
    return proc_kib(pid, "status", "VmRSS")


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
    sql = ("SELECT r.created_at, a.started_at, a.running_at, a.finished_at FROM runs r JOIN run_attempts a "
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


FINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "REJECTED")


def wait_done(session, dep_url, n, timeout=3600, interval=0.5):
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
        final = sum(statuses.get(s, 0) for s in FINAL)
        if final >= n:
            return statuses
        time.sleep(interval)
    raise RuntimeError("runs did not finish")


def deployment(session, url, org, code=NOOP, environment=None):
    base = f"{url}/organizations/{org}/deployments"
    dep = session.post(base, json={"name": "bench-" + uuid.uuid4().hex[:6],
                                   "default_environment": environment or {}}).json()["deployment_id"]
    ver = session.post(f"{base}/{dep}/versions",
                       json={"version": "1", "handler": "main:handler", "image": "python"}).json()
    requests.put(ver["upload_url"], data=code_archive({"main.py": code})).raise_for_status()
    return dep, f"{base}/{dep}", ver["version_id"]


def tree(pid):
    """The pids below `pid` (children, their children...)."""
    kids = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                ppid = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            kids.setdefault(ppid, []).append(int(p))
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


class Server:
    """One `sluice serve` on a backend, with an organization to use."""

    def __init__(self, name):
        self.name = name
        self.dir = tempfile.TemporaryDirectory()
        self.data_dir = Path(self.dir.name)
        self.database_url = fresh_postgres_database() if name == "postgres" else None
        # The bench's interpreter runs user code: pandas is installed there.
        self.proc, self.url, _ = start(self.data_dir, self.database_url,
                                       {"SLUICE_PAGE_SIZE": "1000", "SLUICE_PYTHON": sys.executable})
        org = cli(self.data_dir, self.database_url, "org", "create", "bench", "--json")["organization_id"]
        user = cli(self.data_dir, self.database_url, "user", "create", "--org", org, "b@example.com", "--json")
        self.org = org
        self.session = requests.Session()
        self.session.auth = (f"user-{user['user_id']}", user["personal_access_token"])

    def rows(self, dep):
        return latencies(self.data_dir, self.database_url, dep)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        if self.database_url:
            drop_postgres_database(self.database_url)
        self.dir.cleanup()


def body(ver):
    return {"version_id": ver, "retry_count": 0}


def paced(srv, n, rate):
    dep, dep_url, ver = deployment(srv.session, srv.url, srv.org)
    srv.session.post(f"{dep_url}/runs", json=body(ver)).raise_for_status()
    wait_done(srv.session, dep_url, 1, interval=0.05)
    t0 = time.perf_counter()
    for i in range(n):
        srv.session.post(f"{dep_url}/runs", json=body(ver)).raise_for_status()
        pause = t0 + (i + 1) / rate - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    statuses = wait_done(srv.session, dep_url, n + 1)
    ms = sorted((running - created) / 1000 for created, _, running, _ in srv.rows(dep) if running)[1:]
    return {"p50": percentile(ms, 50), "p99": percentile(ms, 99), "statuses": statuses, "n": n + 1}


def submit_all(srv, dep_url, ver, n, threads=8):
    """Submits n runs from `threads` threads, each over one kept-alive
    connection with the request made once (http.client, not requests: the
    client shares the server's cores, and requests spends several times
    the CPU per call); answers the run ids in submission order."""
    url = urllib.parse.urlsplit(f"{dep_url}/runs")
    user, token = srv.session.auth
    headers = {
        "Authorization": "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode(),
        "Content-Type": "application/json",
    }
    payload = json.dumps(body(ver)).encode()
    local = threading.local()

    def submit(_):
        if not hasattr(local, "c"):
            local.c = http.client.HTTPConnection(url.hostname, url.port)
        local.c.request("POST", url.path, body=payload, headers=headers)
        r = local.c.getresponse()
        answer = r.read()
        if r.status != 201 and r.status != 200:
            raise SystemExit(f"{srv.name}: submitting a run answered {r.status}: {answer[:200]!r}")
        return json.loads(answer)["run_id"]

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(submit, range(n)))


def cpu_seconds(pid, reaped=False):
    """A process's CPU seconds (user + system), or those of its children
    it has waited for (`reaped`)."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    i = 13 if reaped else 11
    return (int(f[i]) + int(f[i + 1])) / os.sysconf("SC_CLK_TCK")


def cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def postgres_seconds():
    """CPU seconds of every PostgreSQL process on this machine."""
    total = 0.0
    for p in os.listdir("/proc"):
        try:
            if p.isdigit() and Path(f"/proc/{p}/comm").read_text().strip() == "postgres":
                total += cpu_seconds(int(p))
        except OSError:
            continue
    return total


def burst(srv, n, code=NOOP, environment=None):
    """n runs of a warmed version: (runs/s claimed and finished, p50, p99),
    and where the CPU went, per run: `sluice serve`, the version's fork
    server, the runs' processes (the fork server's children), PostgreSQL's
    processes and this benchmark's submitting client."""
    dep, dep_url, ver = deployment(srv.session, srv.url, srv.org, code, environment)
    before = set(tree(srv.proc.pid))
    srv.session.post(f"{dep_url}/runs", json=body(ver)).raise_for_status()
    wait_done(srv.session, dep_url, 1, interval=0.05)
    # The fork server the warming run started (none for fresh interpreters).
    forks = [p for p in set(tree(srv.proc.pid)) - before if b"runner.py" in cmdline(p)]
    fork = forks[0] if len(forks) == 1 else None
    start = (cpu_seconds(srv.proc.pid), fork and cpu_seconds(fork), fork and cpu_seconds(fork, reaped=True),
             postgres_seconds(), time.process_time())
    ids = submit_all(srv, dep_url, ver, n)
    client = time.process_time() - start[4]
    # Runs are claimed in submission order: the last one submitted ends
    # about last. Its status alone is read until then (listing every run
    # twice a second would cost the server as much as a tenth of the runs).
    while srv.session.get(f"{dep_url}/runs/{ids[-1]}").json()["status"] not in FINAL:
        time.sleep(0.1)
    ms = lambda seconds: seconds * 1000 / n  # noqa: E731
    cpu = {"serve": ms(cpu_seconds(srv.proc.pid) - start[0]), "client": ms(client)}
    if fork:
        cpu["fork server"] = ms(cpu_seconds(fork) - start[1])
        cpu["runs"] = ms(cpu_seconds(fork, reaped=True) - start[2])
    if srv.database_url:
        cpu["postgres"] = ms(postgres_seconds() - start[3])
    statuses = wait_done(srv.session, dep_url, n + 1)
    if statuses.get("SUCCEEDED", 0) != n + 1:
        raise SystemExit(f"{srv.name}: not every run succeeded: {statuses}")
    rows = sorted(srv.rows(dep))[1:]  # not the warming run
    ms = [(running - created) / 1000 for created, _, running, _ in rows if running]
    span = (max(r[3] for r in rows) - min(r[1] for r in rows)) / 1e6
    return {"rate": len(rows) / span, "p50": percentile(ms, 50), "p99": percentile(ms, 99), "cpu": cpu}


def warm_versions(srv, count):
    """One pandas run on each of `count` versions: the server's RSS and its
    warm interpreters' PSS and RSS, in MiB."""
    for _ in range(count):
        _, dep_url, ver = deployment(srv.session, srv.url, srv.org, PANDAS)
        srv.session.post(f"{dep_url}/runs", json=body(ver)).raise_for_status()
        wait_done(srv.session, dep_url, 1, interval=0.05)
    time.sleep(0.5)
    kids = tree(srv.proc.pid)
    return {
        "servers": len(kids),
        "serve_rss": rss_kib(srv.proc.pid) / 1024,
        "pss": sum(proc_kib(k, "smaps_rollup", "Pss") for k in kids) / 1024,
        "rss": sum(proc_kib(k, "smaps_rollup", "Rss") for k in kids) / 1024,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10000)
    ap.add_argument("--pandas-runs", type=int, default=3000)
    ap.add_argument("--fresh-runs", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--paced", type=int, default=300)
    ap.add_argument("--rate", type=float, default=20)
    ap.add_argument("--warm-versions", type=int, default=10)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--cold-starts", type=int, default=10)
    args = ap.parse_args()
    ensure_built()

    p50, worst, rss = cold_start(args.cold_starts)
    print(f"sluice serve: cold start median {p50:.1f} ms (max {worst:.1f} ms), idle RSS {rss:.1f} MiB")
    names = args.backends.split(",")
    servers = {name: Server(name) for name in names}
    try:
        results = {name: {"noop": [], "pandas": []} for name in names}
        pace = {}
        for i in range(args.repeat):
            order = names if i % 2 == 0 else names[::-1]
            for name in order:
                results[name]["noop"].append(burst(servers[name], args.runs))
            for name in order:
                results[name]["pandas"].append(burst(servers[name], args.pandas_runs, PANDAS))
        for name in names:
            pace[name] = paced(servers[name], args.paced, args.rate)
            results[name]["fresh"] = [burst(servers[name], args.fresh_runs,
                                            environment={"SLUICE_FRESH_INTERPRETER": "1"})]
            results[name]["warm"] = warm_versions(servers[name], args.warm_versions)
    finally:
        for srv in servers.values():
            srv.stop()

    med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
    print(f"\nBursts, runs claimed and finished per second (median of {args.repeat}; "
          f"submit→RUNNING p50/p99 in ms):")
    print(f"{'backend':10} {'handler':28} {'runs':>6} {'runs/s':>8} {'p50':>8} {'p99':>8}")
    for name in names:
        for kind, label, n in (("noop", "no-op, forked", args.runs),
                               ("pandas", "imports pandas, forked", args.pandas_runs),
                               ("fresh", "no-op, fresh interpreter", args.fresh_runs)):
            rs = results[name][kind]
            print(f"{name:10} {label:28} {n:6} {med(rs, 'rate'):8.1f} {med(rs, 'p50'):8.0f} "
                  f"{med(rs, 'p99'):8.0f}")
    print("\nCPU per run in the no-op bursts, ms (median of the bursts; the benchmark's client "
          "submits from the same cores):")
    parts = ("serve", "fork server", "runs", "postgres", "client")
    for name in names:
        rs = results[name]["noop"]
        seen = [f"{part} {statistics.median(r['cpu'][part] for r in rs):.2f}"
                for part in parts if part in rs[0]["cpu"]]
        total = statistics.median(sum(r["cpu"].values()) for r in rs)
        cores = os.cpu_count()
        print(f"{name:10} " + ", ".join(seen) + f"; in all {total:.2f} "
              f"({cores} cores ÷ that: {cores * 1000 / total:.0f} runs/s)")
    print(f"\nPaced: {args.paced} no-op runs at {args.rate}/s, submit→RUNNING:")
    for name in names:
        p = pace[name]
        if p["statuses"].get("SUCCEEDED", 0) != p["n"]:
            raise SystemExit(f"{name}: not every paced run succeeded: {p['statuses']}")
        print(f"{name:10} p50 {p['p50']:.2f} ms, p99 {p['p99']:.2f} ms")
    print(f"\nWarm versions: one pandas run on each of {args.warm_versions} versions:")
    for name in names:
        w = results[name]["warm"]
        print(f"{name:10} {w['servers']} warm interpreters: PSS {w['pss']:.0f} MiB (RSS sum "
              f"{w['rss']:.0f} MiB); sluice serve RSS {w['serve_rss']:.0f} MiB")


if __name__ == "__main__":
    main()
