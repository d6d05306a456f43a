#!/usr/bin/env python3
"""GraphQL face benchmark: p50/p99 latency of the Arize-style importer's `tableJobs` list page
(`first: 50`) on a space holding 10,000 table import jobs. Prints figures,
asserts nothing.

    .venv/bin/python bench/graphql.py [--jobs 10000] [--requests 300] [--database-url postgres://…]

Starts a release `sluice serve` (SQLite metadata by default), makes the jobs
through `createTriggeredOngoingTableImportJob` (BigQuery configs: stored,
never scheduled, so nothing else runs meanwhile), then times the first page
and pages deep in the list (cursors taken from a full walk), the job's
fields as `arize-toolkit` reads them.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from common import BIN, ensure_built

PAGE = """query ($s: ID!, $after: String) { node(id: $s) { ... on Space {
  tableJobs(first: 50, after: $after) { totalCount pageInfo { hasNextPage endCursor }
    edges { node { id jobId jobStatus createdAt modelName modelType modelEnvironmentName table tableStore
      projectId dataset totalQueriesSuccessCount totalQueriesFailedCount totalQueriesPendingCount
      schema { predictionId timestamp features changeTimestamp }
      tableIngestionParameters { refreshIntervalSeconds queryWindowSizeSeconds } } } } } } }"""

CREATE = """mutation ($input: CreateTableImportJobInput!) {
  createTriggeredOngoingTableImportJob(input: $input) { tableImportJob { jobId } } }"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--database-url")
    a = ap.parse_args()
    ensure_built()
    data = tempfile.mkdtemp(prefix="sluice-gql-bench-")
    store = ["--data-dir", data] + (["--database-url", a.database_url] if a.database_url else [])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/graphql"
    serve = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{port}", *store],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                if requests.get(url.replace("/graphql", "/healthz"), timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.time() > deadline or serve.poll() is not None:
                raise RuntimeError("sluice serve did not start")
            time.sleep(0.02)

        def cli(*args):
            out = subprocess.run([BIN, *args, *store, "--json"], check=True, capture_output=True, text=True)
            return json.loads(out.stdout)
        org = cli("org", "create", "bench")["organization_id"]
        key = cli("apikey", "create", "--org", org)["api_key"]
        http = requests.Session()
        http.headers["x-api-key"] = key

        def gql(query, variables):
            r = http.post(url, json={"query": query, "variables": variables}, timeout=60)
            body = r.json()
            if body.get("errors"):
                raise RuntimeError(body["errors"])
            return body["data"]

        for _ in range(100):
            try:
                spaces = gql("{ account { organizations { edges { node { spaces { edges { node { id } } } } } } } }", {})
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        space = spaces["account"]["organizations"]["edges"][0]["node"]["spaces"]["edges"][0]["node"]["id"]

        def make(i):
            s = requests.Session()
            s.headers["x-api-key"] = key
            inp = {"spaceId": space, "modelName": f"model {i}", "modelType": "score_categorical",
                   "modelEnvironmentName": "production", "tableStore": "BigQuery",
                   "bigQueryTableConfig": {"projectId": "p", "dataset": "d", "tableName": f"t{i}"},
                   "schema": {"predictionId": "id", "timestamp": "ts", "features": "f_",
                              "changeTimestamp": "changed"}}
            r = s.post(url, json={"query": CREATE, "variables": {"input": inp}}, timeout=60)
            assert not r.json().get("errors"), r.text
        t = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(make, range(a.jobs)))
        made = time.perf_counter() - t
        print(f"{a.jobs} jobs made in {made:.1f} s ({a.jobs / made:.0f}/s)")

        cursors, after = [None], None
        while True:
            page = gql(PAGE, {"s": space, "after": after})["node"]["tableJobs"]
            if not page["pageInfo"]["hasNextPage"]:
                break
            after = page["pageInfo"]["endCursor"]
            cursors.append(after)
        print(f"walked {len(cursors)} pages of 50 (totalCount {page['totalCount']})")
        for label, pick in [("first page", lambda i: None), ("any page", lambda i: cursors[i % len(cursors)])]:
            times = []
            for i in range(a.requests):
                t = time.perf_counter()
                gql(PAGE, {"s": space, "after": pick(i)})
                times.append((time.perf_counter() - t) * 1000)
            times.sort()
            p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
            print(f"tableJobs(first: 50), {label}: p50 {statistics.median(times):.1f} ms, "
                  f"p99 {p99:.1f} ms ({a.requests} requests)")
    finally:
        serve.terminate()
        serve.wait()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
