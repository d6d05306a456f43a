#!/usr/bin/env python3
"""Web console benchmark: the server's time to make a source's runs table
and the API Run page with 100,000 runs of the source in the store, and what
the pages weigh. Prints figures, asserts what it reads.

    .venv/bin/python bench/console.py [--runs 100000] [--requests 300]

For SQLite and for PostgreSQL metadata: starts `sluice serve`, makes an
organization, a user and an HTTP API source over a local fake API, runs the
source once for real (a run with tasks, tables and messages), then writes
the rest of the source's history straight into the store (ended runs:
completed, failed, cancelled, rejected) and signs in. The server's own
time is read from each page's `Server-Timing` header (store reads and
markup; the network is left out); p50 and p99 over `--requests` loads of
each page: the runs table newest first, sorted by status, filtered by type,
20 pages deep (keyset cursor), and the run page.
"""
import argparse
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from common import BIN, ensure_built
from engine import cli, start

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import PG_ADMIN, psql  # noqa: E402
from fake_api import FakeApi, source_file  # noqa: E402

RUN_COLUMNS = ("id, organization_id, source_name, run_type, status, error, records, tables, attempt, "
               "lease_token, created_at, started_at, finished_at, modified_at, messages")


def seed_sql(org, n, dialect):
    """Ended runs 1..n, an hour apart, oldest first, before the real one."""
    base = "1600000000000000"  # micros: 2020-09-13
    row = (f"'9' || lpad_i, '{org}', 'shop', CASE WHEN i % 5 = 0 THEN 'DESTRUCTIVE' ELSE 'INCREMENTAL' END, "
           f"CASE WHEN i % 10 = 0 THEN 'FAILED' WHEN i % 17 = 0 THEN 'CANCELLED' "
           f"WHEN i % 23 = 0 THEN 'REJECTED' ELSE 'SUCCEEDED' END, "
           f"CASE WHEN i % 10 = 0 THEN 'HTTP 500 from GET /orders' END, i % 1000, 9, 1, 1, "
           f"{base} + i * 3600000000, {base} + i * 3600000000 + 1000000, "
           f"{base} + i * 3600000000 + 1000000 + (i % 97) * 1000000, {base} + i * 3600000000, i % 4")
    if dialect == "sqlite":
        row = row.replace("lpad_i", "substr('000000000' || i, -9, 9)")
        return (f"INSERT INTO api_runs ({RUN_COLUMNS}) WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL "
                f"SELECT i + 1 FROM g WHERE i < {n}) SELECT {row} FROM g")
    row = row.replace("lpad_i", "lpad(i::text, 9, '0')")
    return f"INSERT INTO api_runs ({RUN_COLUMNS}) SELECT {row} FROM generate_series(1, {n}) i"


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def timed(session, url, n):
    durs, size = [], 0
    for _ in range(n):
        r = session.get(url, timeout=60)
        assert r.status_code == 200, (url, r.status_code, r.text[:300])
        m = re.search(r"render;dur=([0-9.]+)", r.headers.get("Server-Timing", ""))
        assert m, f"{url}: no Server-Timing"
        durs.append(float(m.group(1)))
        size = len(r.content)
    return durs, size


def phase(label, what, t0):
    print(f"{label}: {what} after {time.time() - t0:.1f} s", file=sys.stderr, flush=True)


def measure(label, database_url, runs, n, api):
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        data = Path(d)
        proc, url, _ = start(data, database_url)
        try:
            org = cli(data, database_url, "org", "create", "bench", "--json")["organization_id"]
            user = cli(data, database_url, "user", "create", "--org", org, "b@example.com", "--json")
            h = {"Authorization": "Basic " + __import__("base64").b64encode(
                f"user-{user['user_id']}:{user['personal_access_token']}".encode()).decode()}
            r = requests.post(f"{url}/organizations/{org}/sources", json=source_file(api.url), headers=h)
            assert r.status_code == 201, r.text
            # The history first (ended runs, older), then one real run.
            if database_url:
                psql(database_url, seed_sql(org, runs, "postgres"))
                psql(database_url, "ANALYZE api_runs")
            else:
                db = sqlite3.connect(data / "sluice.db", timeout=30)
                db.execute(seed_sql(org, runs, "sqlite"))
                db.commit()
                db.execute("ANALYZE")
                db.close()
            phase(label, "history written", t0)
            real = requests.post(f"{url}/organizations/{org}/sources/shop/runs", json={}, headers=h).json()["id"]
            deadline = time.time() + 120
            while requests.get(f"{url}/organizations/{org}/api-runs/{real}", headers=h).json()["status"] \
                    != "SUCCEEDED":
                assert time.time() < deadline, "the real run did not complete"
                time.sleep(0.2)
            phase(label, "real run completed", t0)
            s = requests.Session()
            r = s.post(f"{url}/signin", data={"user": user["user_id"], "token": user["personal_access_token"]},
                       allow_redirects=False)
            assert r.status_code in (302, 303), r.status_code
            # 20 pages deep: follow the next-page links.
            page = s.get(f"{url}/sources/shop").text
            for _ in range(20):
                page_url = re.search(r'rel="next" href="([^"]+)"', page).group(1).replace("&amp;", "&")
                page = s.get(url + page_url).text
            rows = page.count('<td><a href="/runs/')
            assert rows == 50, rows
            pages = {
                "runs table, newest first": f"{url}/sources/shop",
                "runs table, sorted by status": f"{url}/sources/shop?sort=status&order=asc",
                "runs table, type destructive": f"{url}/sources/shop?type=destructive",
                "runs table, 20 pages deep": url + page_url,
                "API Run page": f"{url}/runs/{real}",
            }
            out = []
            phase(label, "20 pages walked", t0)
            for name, page_url in pages.items():
                durs, size = timed(s, page_url, n)
                out.append((label, name, pct(durs, 50), pct(durs, 99), size))
                phase(label, name, t0)
            css = len(s.get(f"{url}/assets/console.css").content)
            js = len(s.get(f"{url}/assets/console.js").content)
            return out, css, js
        finally:
            proc.terminate()
            proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=300)
    a = ap.parse_args()
    ensure_built()
    api = FakeApi()
    try:
        rows = []
        pg = "console_bench_" + str(int(time.time()))
        psql(PG_ADMIN, f"CREATE DATABASE {pg}")
        try:
            sq, css, js = measure("SQLite", None, a.runs, a.requests, api)
            pgr, _, _ = measure("PostgreSQL", PG_ADMIN.rsplit("/", 1)[0] + "/" + pg, a.runs, a.requests, api)
            rows = sq + pgr
        finally:
            subprocess.run(["psql", PG_ADMIN, "-qc", f"DROP DATABASE IF EXISTS {pg} WITH (FORCE)"],
                           capture_output=True)
    finally:
        api.stop()
    print(f"{a.runs + 1:,} API runs of one source in the store; server time per page from its "
          f"Server-Timing header (store reads and markup), {a.requests} loads each; page weight is the "
          f"HTML (the stylesheet, {css:,} B, and script, {js:,} B, are cached for an hour).\n")
    print("| store | page | p50 | p99 | page weight |")
    print("|---|---|---|---|---|")
    for label, name, p50, p99, size in rows:
        print(f"| {label} | {name} | {p50:.2f} ms | {p99:.2f} ms | {size:,} B |")


if __name__ == "__main__":
    main()
