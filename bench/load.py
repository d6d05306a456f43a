#!/usr/bin/env python3
"""Load benchmark: the REST API under a steady mixed load, open loop, on
loopback. Prints figures, asserts what it reads.

    .venv/bin/python bench/load.py [--runs 1000000] [--seconds 60] [--rate 1000] [--submits 50]

For SQLite and for PostgreSQL metadata: starts `sluice serve --no-worker`
(the API alone: submitted runs wait in the queue, no user code competes
for the two cores), makes an organization, a user, a deployment with a
version and one real run, then writes `--runs` ended runs of that
deployment straight into the store (a copy of the real run's row, new
ids) and 1,000 log lines of one run. Then `sluice-loadgen` (crates/loadgen,
a Rust open-loop generator: each kind at its own fixed rate, latency
counted from when a request was due, so a slow answer cannot hide a
queue) sends for `--seconds`: `--rate` requests a second in all, of which
`--submits` are run submissions and the rest reads — a run by id (55 %),
a runs page of 50 (the first page and pages up to 20 deep, by the API's
next_page_token; 30 %), a log page (15 %) — all with a user's credentials.
Figures: achieved requests a second, answers that were not 200 (target
0), p50/p99 per kind (targets: a run p99 ≤ 5 ms, a runs page p99 ≤ 20 ms),
and the server's RSS after the run (and its peak). "Sent again" counts
requests the generator sent a second time on a new connection because
the server had closed the idle kept-alive one first, as HTTP clients do."""
import argparse
import base64
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from common import ROOT, TARGET, ensure_built, proc_kib
from engine import cli, start

sys.path.insert(0, str(ROOT / "tests"))
from conftest import code_archive, postgres_databases, store_sql  # noqa: E402


def loadgen():
    """The generator's binary: built with the release profile unless the
    measured sluice is a debug build (the CI smoke run)."""
    debug = os.environ.get("SLUICE_BIN", "").endswith("debug/sluice")
    profile = [] if debug else ["--release"]
    subprocess.run(["cargo", "build", "--quiet", *profile, "-p", "sluice-loadgen"], cwd=ROOT, check=True)
    return str(TARGET / ("debug" if debug else "release") / "sluice-loadgen")


class Store:
    """SQL on the server's metadata store."""

    def __init__(self, data, database_url):
        self.data, self.url = data, database_url

    def run(self, sql):
        return store_sql(self.data, self.url, sql)

    def columns(self, table):
        if self.url:
            out = self.run(f"SELECT column_name FROM information_schema.columns WHERE table_name = '{table}' "
                           "ORDER BY ordinal_position")
        else:
            out = "\n".join(r.split("|")[1] for r in self.run(f"PRAGMA table_info({table})").splitlines())
        return [c.strip() for c in out.splitlines() if c.strip()]

    def numbers(self, n):
        """A FROM clause giving i = 1..n."""
        if self.url:
            return f"generate_series(1, {n}) AS g(i)"
        return f"(WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < {n}) SELECT i FROM g)"

    def pad(self, expr, width):
        if self.url:
            return f"lpad(({expr})::text, {width}, '0')"
        return f"substr('{'0' * width}' || ({expr}), -{width}, {width})"


def seed(store, template_run, runs):
    """`runs` ended copies of the template run (ids run-9…), older than it,
    and 1,000 log lines of the first copy."""
    cols = [c for c in store.columns("runs") if c != "seq"]
    varied = {
        "id": f"'run-9' || {store.pad('i', 15)}",
        "status": "'SUCCEEDED'",
        "created_at": "created_at - 1000000000 + i * 1000",
        "modified_at": "created_at - 1000000000 + i * 1000 + 500",
        "started_at": "created_at - 1000000000 + i * 1000 + 100",
        "finished_at": "created_at - 1000000000 + i * 1000 + 400",
        "idempotency_key": "NULL",
        "lease_owner": "NULL",
        "lease_expires_at": "NULL",
    }
    select = ", ".join(varied.get(c, c) for c in cols)
    store.run(f"INSERT INTO runs ({', '.join(cols)}) SELECT {select} FROM runs, {store.numbers(runs)} "
              f"WHERE runs.id = '{template_run}'")
    first = f"run-9{1:015d}"
    store.run(f"INSERT INTO log_events (run_id, attempt, ts, message) SELECT '{first}', 1, "
              f"1600000000000000 + i * 1000, 'line ' || i || ' of a run that wrote a thousand' "
              f"FROM {store.numbers(1000)}")
    store.run("ANALYZE" if not store.url else "ANALYZE runs; ANALYZE log_events")
    return first


def measure(label, database_url, a, generator):
    with tempfile.TemporaryDirectory() as d:
        data = Path(d)
        proc, url, _ = start(data, database_url, {"SLUICE_PAGE_SIZE": "50"}, ["--no-worker"])
        try:
            org = cli(data, database_url, "org", "create", "load", "--json")["organization_id"]
            user = cli(data, database_url, "user", "create", "--org", org, "l@example.com", "--json")
            auth = "Basic " + base64.b64encode(
                f"user-{user['user_id']}:{user['personal_access_token']}".encode()).decode()
            h = {"Authorization": auth}
            base = f"/organizations/{org}/deployments"
            dep = requests.post(url + base, json={"name": "load"}, headers=h).json()["deployment_id"]
            ver = requests.post(f"{url}{base}/{dep}/versions", headers=h,
                                json={"version": "1", "handler": "main:handler", "image": "python"}).json()
            code = code_archive({"main.py": "def handler(request, context):\n    return {}\n"})
            assert requests.put(ver["upload_url"], data=code).status_code == 200
            real = requests.post(f"{url}{base}/{dep}/runs", json={"version_id": ver["version_id"]},
                                 headers=h).json()["run_id"]
            t0 = time.time()
            logged = seed(Store(data, database_url), real, a.runs)
            print(f"{label}: {a.runs:,} runs written in {time.time() - t0:.1f} s", file=sys.stderr, flush=True)
            runs = f"{base}/{dep}/runs"
            # Pages up to 20 deep, by the API's own cursor.
            pages, token = [runs], None
            for _ in range(20):
                r = requests.get(url + runs + (f"?next_page_token={token}" if token else ""), headers=h).json()
                assert len(r["entries"]) == 50, len(r["entries"])
                token = r["next_page_token"]
                pages.append(f"{runs}?next_page_token={token}")
            rng = random.Random(7)
            ids = [f"run-9{rng.randint(1, a.runs):015d}" for _ in range(1000)]
            assert requests.get(f"{url}{runs}/{ids[0]}", headers=h).status_code == 200
            reads = a.rate - a.submits
            port = url.rsplit(":", 1)[1]
            plan = {
                "addr": f"127.0.0.1:{port}",
                "seconds": a.seconds,
                "kinds": [
                    {"name": "GET a run", "rate": reads * 0.55, "method": "GET", "headers": h,
                     "paths": [f"{runs}/{i}" for i in ids]},
                    {"name": "runs page of 50", "rate": reads * 0.30, "method": "GET", "headers": h,
                     "paths": pages},
                    {"name": "log page", "rate": reads * 0.15, "method": "GET", "headers": h,
                     "paths": [f"{runs}/{logged}/logs", f"{runs}/{logged}/recentlogs"]},
                    {"name": "submit a run", "rate": a.submits, "method": "POST", "headers": h,
                     "paths": [runs], "body": json.dumps({"version_id": ver["version_id"]})},
                ],
            }
            out = subprocess.run([generator], input=json.dumps(plan), capture_output=True, text=True,
                                 check=True)
            result = json.loads(out.stdout)
            rss, peak = proc_kib(proc.pid, "status", "VmRSS"), proc_kib(proc.pid, "status", "VmHWM")
            for name, k in result["kinds"].items():
                bad = {s: n for s, n in k["statuses"].items() if s != "200"}
                assert not bad and k["errors"] == 0, (label, name, bad, k["errors"], k["first_error"])
            submitted = int(Store(data, database_url).run(
                f"SELECT count(*) FROM runs WHERE deployment_id = '{dep}' AND status <> 'SUCCEEDED'"))
            assert submitted == result["kinds"]["submit a run"]["sent"] + 1, submitted
            return result, rss, peak
        finally:
            proc.terminate()
            proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--submits", type=float, default=50)
    a = ap.parse_args()
    ensure_built()
    generator = loadgen()
    with postgres_databases("load_bench", count=1) as (pg,):
        results = [("SQLite", *measure("SQLite", None, a, generator)),
                   ("PostgreSQL", *measure("PostgreSQL", pg, a, generator))]
    print(f"{a.runs:,} runs in one deployment; {a.rate:,.0f} requests/s for {a.seconds:.0f} s "
          f"({a.submits:,.0f}/s submits), open loop, `sluice serve --no-worker`, loopback.\n")
    print("| store | achieved | not 200 | sent again | GET a run p50 / p99 | runs page of 50 p50 / p99 "
          "| log page p50 / p99 | submit p50 / p99 | RSS after (peak) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, r, rss, peak in results:
        k = r["kinds"]
        bad = sum(n for x in k.values() for s, n in x["statuses"].items() if s != "200") + \
            sum(x["errors"] for x in k.values())
        cells = " | ".join(f"{k[n]['p50_ms']:.2f} / {k[n]['p99_ms']:.2f} ms"
                           for n in ("GET a run", "runs page of 50", "log page", "submit a run"))
        resent = sum(x["resent"] for x in k.values())
        print(f"| {label} | {r['achieved_rps']:,.0f} req/s | {bad} | {resent} | {cells} | "
              f"{rss / 1024:.0f} MiB ({peak / 1024:.0f} MiB) |")


if __name__ == "__main__":
    main()
