#!/usr/bin/env python3
"""Datalake trigger benchmark: prints figures; fails when a file started no run.

    .venv/bin/python bench/datalake.py [--files 300] [--rate 10]
                                       [--backends sqlite,postgres]

For each metadata backend it starts a release `sluice serve`, deploys a
handler that does nothing, puts a trigger on a channel and uploads `--files`
small files (100 bytes) at `--rate` per second, below what the worker can
execute. It prints, from the store's own timestamps, upload → run RUNNING
latency (the file's arrival is stored with its trigger event; RUNNING is
when the handler's process runs) and the client's upload round trip.
"""
import argparse
import statistics
import subprocess
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

import requests

from engine import (BIN, NOOP, cli, code_archive, drop_postgres_database, ensure_built,
                    fresh_postgres_database, percentile, start)


def rows(data_dir, database_url, trigger):
    sql = ("SELECT e.created_at, a.running_at FROM trigger_events e JOIN run_attempts a "
           f"ON a.run_id = e.run_id AND a.attempt = 1 WHERE e.trigger_id = '{trigger}'")
    if database_url:
        out = subprocess.run(["psql", database_url, "-At", "-F", ",", "-c", sql], check=True,
                             capture_output=True, text=True).stdout
        return [tuple(int(x) if x else None for x in line.split(",")) for line in out.splitlines() if line]
    db = sqlite3.connect(data_dir / "sluice.db")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def bench_backend(name, files, rate):
    with tempfile.TemporaryDirectory() as d:
        data_dir = Path(d)
        database_url = fresh_postgres_database() if name == "postgres" else None
        proc, url, _ = start(data_dir, database_url, {"SLUICE_PAGE_SIZE": "1000"})
        try:
            org = cli(data_dir, database_url, "org", "create", "bench", "--json")["organization_id"]
            user = cli(data_dir, database_url, "user", "create", "--org", org, "b@example.com", "--json")
            s = requests.Session()
            s.auth = (f"user-{user['user_id']}", user["personal_access_token"])
            base = f"{url}/organizations/{org}/deployments"
            dep = s.post(base, json={"name": "noop-" + uuid.uuid4().hex[:6]}).json()["deployment_id"]
            ver = s.post(f"{base}/{dep}/versions",
                         json={"version": "1", "handler": "main:handler", "image": "python"}).json()
            requests.put(ver["upload_url"], data=code_archive({"main.py": NOOP})).raise_for_status()
            channel = s.post(f"{url}/organizations/{org}/channels",
                             json={"name": "in", "description": "", "storage_type": "datalake"}
                             ).json()["channel"]["channel_id"]
            trigger = s.post(f"{base}/{dep}/triggers", json={
                "version_id": ver["version_id"], "input_service_name": "datalake",
                "input_service_id": channel, "retry_count": 0}).json()["trigger_id"]

            round_trips = []
            t0 = time.perf_counter()
            for i in range(files):
                t = time.perf_counter()
                s.post(f"{url}/channels/{channel}/upload", data=b"x" * 100,
                       headers={"Content-Type": "text/plain"}).raise_for_status()
                round_trips.append((time.perf_counter() - t) * 1000)
                pause = t0 + (i + 1) / rate - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
            deadline = time.time() + 600
            while time.time() < deadline:
                done = [r for r in rows(data_dir, database_url, trigger) if r[1]]
                if len(done) >= files:
                    break
                time.sleep(1)
            ms = [(running - arrived) / 1000 for arrived, running in done]
            return {
                "p50": percentile(ms, 50), "p99": percentile(ms, 99), "runs": len(done),
                "upload_p50": statistics.median(round_trips),
            }
        finally:
            proc.terminate()
            proc.wait()
            if database_url:
                drop_postgres_database(database_url)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=300)
    ap.add_argument("--rate", type=float, default=10)
    ap.add_argument("--backends", default="sqlite,postgres")
    a = ap.parse_args()
    ensure_built()
    print(f"{'backend':10} {'upload→RUNNING p50':>19} {'p99':>9} {'upload p50':>11} {'runs':>6}")
    for name in a.backends.split(","):
        r = bench_backend(name, a.files, a.rate)
        if r["runs"] != a.files:
            raise SystemExit(f"{name}: {r['runs']} of {a.files} files started a run")
        print(f"{name:10} {r['p50']:>17.2f}ms {r['p99']:>7.2f}ms {r['upload_p50']:>9.2f}ms "
              f"{r['runs']:>6}", flush=True)
    print(f"({a.files} files of 100 bytes at {a.rate}/s; latency from the store's timestamps)")


if __name__ == "__main__":
    main()
