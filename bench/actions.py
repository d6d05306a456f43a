#!/usr/bin/env python3
"""Action API benchmark: prints figures; fails when a run did not succeed.

    .venv/bin/python bench/actions.py [--launches 200] [--rate 10] [--dags 5]
                                      [--backends sqlite,postgres]

For each metadata backend it starts a release `sluice serve` with the
embedded warehouse, deploys two Tailer table-to-table configurations and
measures, from the store's own timestamps:

- launch → RUNNING: `--launches` launches of a one-task configuration
  (`POST /v1/dag/launch`, paced at `--rate` per second, below what the
  runner executes), from the run's creation to its task starting in the
  warehouse;
- a 10-task DAG's overhead: `--dags` runs of a configuration whose ten
  tasks form a chain (`t01 >> t02 >> … >> t10`), each a trivial query into
  its own table. The overhead is the run's wall time (launch to end) minus
  the time its tasks spent running, as sluice records each task (opening
  the warehouse, the task's transaction with its ledger row, the SQL).
"""
import argparse
import json
import subprocess
import sqlite3
import tempfile
import time
from pathlib import Path

import requests

from engine import cli, drop_postgres_database, ensure_built, fresh_postgres_database, percentile, start

ONE = {
    "configuration_type": "table-to-table", "configuration_id": "000099_one", "account": "000099",
    "environment": "DEV", "start_date": "2024, 1, 1", "schedule_interval": "None",
    "default_gcp_project_id": "lake", "default_bq_dataset": "bench", "default_write_disposition": "WRITE_TRUNCATE",
    "max_active_runs": 50, "task_dependencies": ["only"],
    "workflow": [{"id": "only", "sql_file": "one.sql", "table_name": "one"}],
}
CHAIN = dict(ONE, configuration_id="000099_chain",
             task_dependencies=[" >> ".join(f"t{i:02}" for i in range(1, 11))],
             workflow=[{"id": f"t{i:02}", "sql_file": "one.sql", "table_name": f"t{i:02}"} for i in range(1, 11)])


def store_rows(data_dir, database_url, sql):
    if database_url:
        out = subprocess.run(["psql", database_url, "-At", "-F", ",", "-c", sql], check=True,
                             capture_output=True, text=True).stdout
        return [tuple(int(x) if x.lstrip("-").isdigit() else (x or None) for x in line.split(","))
                for line in out.splitlines() if line]
    db = sqlite3.connect(data_dir / "sluice.db")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def deploy(data_dir, database_url, org, config, folder):
    folder.mkdir(exist_ok=True)
    (folder / "conf.json").write_text(json.dumps(config))
    (folder / "one.sql").write_text("SELECT 1 AS x")
    cli(data_dir, database_url, "config", "deploy", str(folder / "conf.json"), "--org", org, "--json")


def launch(url, token, api_id):
    res = requests.post(f"{url}/v1/dag/launch", headers={"Authorization": f"Bearer {token}"}, json={
        "action": "launch_job", "account": "000099", "environment": "DEV",
        "configuration_type": "table-to-table", "configuration_id": api_id})
    res.raise_for_status()
    return res.json()["run_id"]


def wait_ended(data_dir, database_url, ids):
    wanted = "', '".join(ids)
    deadline = time.time() + 600
    while time.time() < deadline:
        rows = store_rows(data_dir, database_url,
                          f"SELECT status FROM action_runs WHERE id IN ('{wanted}')")
        ended = [r for r in rows if r[0] in ("SUCCEEDED", "FAILED", "CANCELLED")]
        if len(ended) == len(ids):
            bad = [r for r in ended if r[0] != "SUCCEEDED"]
            if bad:
                raise SystemExit(f"{len(bad)} runs did not succeed")
            return
        time.sleep(0.2)
    raise SystemExit("runs did not end within 10 minutes")


def bench_backend(name, launches, rate, dags):
    with tempfile.TemporaryDirectory() as d:
        data_dir = Path(d)
        database_url = fresh_postgres_database() if name == "postgres" else None
        proc, url, _ = start(data_dir, database_url, {"SLUICE_POLL_MS": "1000"})
        try:
            org = cli(data_dir, database_url, "org", "create", "bench", "--account", "000099",
                      "--json")["organization_id"]
            cli(data_dir, database_url, "user", "create", "--org", org, "b@example.com", "--json")
            subprocess.run([*base(data_dir, database_url, "warehouse", "add", "lake", "embedded", "--org", org)],
                           check=True, capture_output=True)
            out = subprocess.run(base(data_dir, database_url, "auth", "get-token", "--org", org), check=True,
                                 capture_output=True, text=True).stdout
            token = out.splitlines()[6].split()[3]
            deploy(data_dir, database_url, org, ONE, data_dir / "one")
            deploy(data_dir, database_url, org, CHAIN, data_dir / "chain")

            ids = []
            t0 = time.perf_counter()
            for i in range(launches):
                ids.append(launch(url, token, "000099_one_DEV"))
                pause = t0 + (i + 1) / rate - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
            wait_ended(data_dir, database_url, ids)
            rows = store_rows(data_dir, database_url,
                              "SELECT r.created_at, t.started_at FROM action_runs r JOIN action_tasks t "
                              "ON t.run_id = r.id WHERE r.api_id = '000099_one_DEV'")
            lat = [(s - c) / 1000 for c, s in rows]
            assert len(lat) == launches, (len(lat), launches)

            overheads, wall, task_ms = [], [], []
            for _ in range(dags):
                run = launch(url, token, "000099_chain_DEV")
                wait_ended(data_dir, database_url, [run])
                [(created, finished)] = store_rows(
                    data_dir, database_url,
                    f"SELECT created_at, finished_at FROM action_runs WHERE id = '{run}'")
                spans = store_rows(data_dir, database_url,
                                   f"SELECT started_at, finished_at FROM action_tasks WHERE run_id = '{run}'")
                assert len(spans) == 10, spans
                busy = sum(f - s for s, f in spans)
                wall.append((finished - created) / 1000)
                overheads.append((finished - created - busy) / 1000)
                task_ms.extend((f - s) / 1000 for s, f in spans)
            return {
                "p50": percentile(lat, 50), "p99": percentile(lat, 99),
                "wall": percentile(wall, 50), "overhead": percentile(overheads, 50),
                "task": percentile(task_ms, 50),
            }
        finally:
            proc.terminate()
            proc.wait()
            if database_url:
                drop_postgres_database(database_url)


def base(data_dir, database_url, *args):
    from engine import BIN
    cmd = [BIN, *args, "--data-dir", str(data_dir)]
    if database_url:
        cmd += ["--database-url", database_url]
    return cmd


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--launches", type=int, default=200)
    ap.add_argument("--rate", type=float, default=10)
    ap.add_argument("--dags", type=int, default=5)
    ap.add_argument("--backends", default="sqlite,postgres")
    a = ap.parse_args()
    ensure_built()
    print("backend   launch→RUNNING p50   p99     10-task chain: wall   beyond task time   task (median)")
    for name in a.backends.split(","):
        r = bench_backend(name, a.launches, a.rate, a.dags)
        print(f"{name:<9} {r['p50']:>10.1f}ms  {r['p99']:>7.1f}ms  {r['wall']:>17.1f}ms  "
              f"{r['overhead']:>14.1f}ms  {r['task']:>10.1f}ms")
    print(f"(launches: {a.launches} at {a.rate:g}/s of a one-task configuration; chain: median of {a.dags} "
          "runs of ten trivial queries in a chain, into the embedded warehouse)")


if __name__ == "__main__":
    main()
