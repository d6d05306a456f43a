#!/usr/bin/env python3
"""API ingestion benchmark: prints figures; fails when a record did not
land exactly once.

    .venv/bin/python bench/api.py [--records 1000000] [--page 1000] [--dlt-python PY]

A local HTTP API (a Python server on loopback, keep-alive) serves
`--records` records of 10 fields, one of them a list of two objects, in
pages of `--page` (page-number pagination). `sluice source run` (release
build, the run executed by the command itself) loads them into the embedded
warehouse: the records and their child rows are counted there, records/s
and the command's peak RSS are printed.

Beside it, in the same run and against the same server, dlt's `rest_api`
source with the same configuration into DuckDB — when dlt is installed for
`--dlt-python` (default: this interpreter; the benchmark does not need it).
"""
import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from engine import BIN, cli, ensure_built

FIELDS = ["id", "name", "email", "amount", "qty", "active", "created_at", "country", "score", "items"]


def page_body(n, per, total):
    first = (n - 1) * per
    recs = []
    for i in range(first + 1, min(first + per, total) + 1):
        recs.append({"id": i, "name": f"name {i}", "email": f"user{i}@example.com",
                     "amount": round(i * 0.37, 2), "qty": i % 97, "active": i % 2 == 0,
                     "created_at": f"2026-03-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z",
                     "country": ["FR", "DE", "US", "JP"][i % 4], "score": i % 1000,
                     "items": [{"sku": f"s{i}", "n": 1}, {"sku": f"t{i}", "n": 2}]})
    pages = (total + per - 1) // per
    return json.dumps({"data": recs, "total_pages": pages}).encode()


def serve(total, per):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            q = parse_qs(urlparse(self.path).query)
            body = page_body(int(q.get("page", ["1"])[0]), per, total)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def config(url):
    """The configuration both tools get (dlt's rest_api vocabulary)."""
    return {
        "client": {"base_url": url},
        "resources": [{"name": "records", "endpoint": {
            "path": "records", "data_selector": "data",
            "paginator": {"type": "page_number", "base_page": 1, "total_path": "total_pages"}}}],
    }


def run_sluice(url, total):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        data = d / "data"
        # The store made once by a short serve, as the README does.
        proc = subprocess.Popen([BIN, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while not (data / "sluice.db").exists():
            if time.time() > deadline:
                raise SystemExit("sluice serve did not make its store")
            time.sleep(0.05)
        time.sleep(0.5)
        proc.terminate()
        proc.wait()
        org = cli(data, None, "org", "create", "bench", "--json")["organization_id"]
        doc = dict(config(url), name="bench")
        (d / "source.json").write_text(json.dumps(doc))
        subprocess.run([BIN, "source", "create", "--file", str(d / "source.json"), "--org", org,
                        "--data-dir", str(data)], check=True, capture_output=True)
        t = time.perf_counter()
        p = subprocess.Popen([BIN, "source", "run", "bench", "--org", org, "--json", "--data-dir", str(data)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, SLUICE_LOG="warn"))
        out = p.stdout.read()
        err = p.stderr.read()
        _, status, usage = os.wait4(p.pid, 0)
        took = time.perf_counter() - t
        if status != 0:
            raise SystemExit(f"sluice source run failed: {err.decode()[-2000:]} {out.decode()[-3000:]}")
        run = json.loads(out)
        db = sqlite3.connect(data / "warehouse" / "actions" / org / "bench.db")
        n, distinct, total_id = db.execute("SELECT count(*), count(DISTINCT id), sum(id) FROM records").fetchone()
        items = db.execute("SELECT count(*) FROM records__items").fetchone()[0]
        sample = db.execute("SELECT name, amount, active, country FROM records WHERE id = 777").fetchone()
        if (n, distinct, total_id, items) != (total, total, total * (total + 1) // 2, 2 * total):
            raise SystemExit(f"sluice loaded {n} records ({distinct} distinct), {items} items: not {total}")
        if total >= 777 and sample != ("name 777", 287.49, 0, "DE"):
            raise SystemExit(f"record 777 differs: {sample}")
        return took, usage.ru_maxrss / 1024, run


DLT_SCRIPT = r"""
import json, sys, time
import dlt
from dlt.sources.rest_api import rest_api_source
cfg = json.loads(sys.argv[1])
pipeline = dlt.pipeline(pipeline_name="api_bench", destination="duckdb", dataset_name="loaded",
                        pipelines_dir=sys.argv[2])
t = time.perf_counter()
pipeline.run(rest_api_source(cfg))
took = time.perf_counter() - t
with pipeline.sql_client() as c:
    n = c.execute_sql("SELECT count(*) FROM records")[0][0]
    items = c.execute_sql("SELECT count(*) FROM records__items")[0][0]
print(json.dumps({"seconds": took, "records": n, "items": items}))
"""


def run_dlt(python, url, total):
    probe = subprocess.run([python, "-c", "import dlt, duckdb"], capture_output=True)
    if probe.returncode != 0:
        return None
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        p = subprocess.Popen([python, "-c", DLT_SCRIPT, json.dumps(config(url)), d], cwd=d,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=dict(os.environ, RUNTIME__LOG_LEVEL="WARNING"))
        out = p.stdout.read()
        err = p.stderr.read()
        _, status, usage = os.wait4(p.pid, 0)
        took = time.perf_counter() - t
        if status != 0:
            raise SystemExit(f"dlt failed: {err.decode()[-2000:]}")
        got = json.loads(out.decode().strip().splitlines()[-1])
        if (got["records"], got["items"]) != (total, 2 * total):
            raise SystemExit(f"dlt loaded {got}: not {total} records")
        return took, usage.ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--page", type=int, default=1000)
    ap.add_argument("--dlt-python", default=os.environ.get("DLT_PYTHON", sys.executable))
    a = ap.parse_args()
    ensure_built()
    server, url = serve(a.records, a.page)
    try:
        # What serving alone costs (the ceiling of both tools).
        t = time.perf_counter()
        pages = (a.records + a.page - 1) // a.page
        for n in range(1, pages + 1):
            page_body(n, a.page, a.records)
        serving = time.perf_counter() - t
        took, rss, run = run_sluice(url, a.records)
        dlt = run_dlt(a.dlt_python, url, a.records)
    finally:
        server.shutdown()
    rate = a.records / took
    print(f"{a.records:,} records (10 fields, a list of 2 objects each) in pages of {a.page:,} "
          f"from a local API, into the embedded warehouse:")
    print(f"  the API making its pages alone:   {serving:7.2f} s  {a.records / serving:10,.0f} records/s")
    print(f"  sluice source run:                {took:7.2f} s  {rate:10,.0f} records/s  "
          f"peak RSS {rss:6.1f} MB  ({run['tables']} tables, {len(run['tasks'])} tasks)")
    if dlt is None:
        print(f"  dlt rest_api → DuckDB:            not installed for {a.dlt_python} "
              "(pip install \"dlt[duckdb]\"; --dlt-python)")
    else:
        dt, drss = dlt
        print(f"  dlt rest_api → DuckDB:            {dt:7.2f} s  {a.records / dt:10,.0f} records/s  "
              f"peak RSS {drss:6.1f} MB")
        print(f"  sluice / dlt throughput:          {dt / took:7.2f}×")


if __name__ == "__main__":
    main()
