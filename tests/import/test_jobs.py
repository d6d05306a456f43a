"""Persistent table import jobs, driven through the CLI against a running
`sluice serve` (SQLite and PostgreSQL metadata stores), with a PostgreSQL
source and destination: dry runs, scheduled queries, pause and resume,
windows run again by hand, delete; and `sluice job run` killed with SIGKILL
during extraction and during load, then every row exactly once."""
import json
import signal
import sqlite3
import subprocess
import time

import pytest

from conftest import BIN, Sluice, fresh_postgres_database, postgres_databases, psql, wait_for
from preds import MAPPED, SOURCE, add_rows, fingerprint, job_toml



@pytest.fixture
def dbs():
    with postgres_databases("sluice_job") as urls:
        yield urls


def cli(s, *args, check=True):
    p = subprocess.run([BIN, *args, *s.store_args()], env=s.env, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"sluice {' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return p


def cli_json(s, *args, check=True):
    return json.loads(cli(s, *args, "--json", check=check).stdout)


@pytest.fixture(params=["sqlite", "postgres"])
def server(request, tmp_path):
    url = fresh_postgres_database() if request.param == "postgres" else None
    s = Sluice(tmp_path, url, env={"SLUICE_HEARTBEAT_MS": "300", "SLUICE_POLL_MS": "100"})
    yield s
    s.stop()


def test_dry_run_names_every_problem_and_writes_nothing(server, dbs, tmp_path):
    src, dst = dbs
    psql(src, SOURCE)
    add_rows(src, 1, 100)
    org = server.new_org()[0]
    bad = job_toml(tmp_path / "bad.toml", src, dst, schema="""predictionId = "prediction_id"
timestamp = "prediction_ts"
actualLabel = "no_such_column"
features = "nope_"
changeTimestamp = "model_version"
""")
    out = cli_json(server, "job", "create", "--org", org, "--file", str(bad), check=False)
    codes = sorted((d["code"], d.get("column")) for d in out["diagnostics"])
    assert codes == [("change_column_not_timestamp", "model_version"),
                     ("column_not_found", "no_such_column"),
                     ("prefix_matches_nothing", None)], out
    sample = next(d for d in out["diagnostics"] if d["code"] == "change_column_not_timestamp")
    assert sample["sample"] == "v1", "the diagnostic shows a value of the column"
    assert out["valid"] is False and "job" not in out
    # Nothing stored, nothing written at the destination.
    assert cli_json(server, "job", "list", "--org", org, "--all") == []
    assert psql(dst, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == "0"
    # A good job's dry run lists the columns it would load, and stores nothing either.
    good = job_toml(tmp_path / "good.toml", src, dst)
    out = cli_json(server, "job", "create", "--org", org, "--file", str(good), "--dry-run")
    assert out["valid"] is True and ", ".join(out["columns"]) == MAPPED
    assert cli_json(server, "job", "list", "--org", org, "--all") == []
    assert psql(dst, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == "0"


def test_a_job_runs_on_schedule_pauses_resumes_reruns_a_window_and_is_deleted(server, dbs, tmp_path):
    src, dst = dbs
    psql(src, SOURCE)
    add_rows(src, 1, 30_000)
    org = server.new_org()[0]
    f = job_toml(tmp_path / "job.toml", src, dst, ingestion="rowLimit = 20000\nrefreshIntervalMinutes = 60")
    job = cli_json(server, "job", "create", "--org", org, "--file", str(f))["job"]
    assert "postgres://" in job["source"] and job["status"] == "active"
    jid = job["id"]

    def queries():
        return cli_json(server, "job", "queries", jid, "--org", org)

    # The first query is due at once: the server makes and runs it.
    first = wait_for(lambda: [q for q in queries() if q["status"] == "SUCCEEDED"], "the first query")
    assert first[0]["trigger"] == "schedule" and first[0]["records"] == 20_000, first
    assert first[0]["window_end"] is not None
    tasks = cli_json(server, "job", "tasks", first[0]["id"], "--org", org)
    assert [(t["name"], t["status"]) for t in tasks] == [
        ("extract", "SUCCEEDED"), ("consolidate", "SUCCEEDED"),
        ("load", "SUCCEEDED"), ("complete", "SUCCEEDED")], tasks
    assert tasks[0]["records"] == 20_000 and tasks[2]["records"] == 20_000
    assert any("manifest" in m for m in tasks[0]["messages"]), tasks[0]
    # The rest by hand, then nothing new.
    run = cli_json(server, "job", "run", jid, "--org", org)
    assert (run["status"], run["records"]) == ("SUCCEEDED", 10_000)
    assert fingerprint(dst, "preds") == fingerprint(src, "preds")
    assert psql(dst, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'preds' "
                     "AND column_name IN ('feature_secret', 'model_version', 'other')") == "0"
    assert psql(dst, "SELECT data_type || ':' || numeric_precision || ',' || numeric_scale "
                     "FROM information_schema.columns WHERE table_name = 'preds' "
                     "AND column_name = 'feature_score'") == "numeric:12,2"

    # Paused: no query, by schedule or by hand.
    assert cli_json(server, "job", "pause", jid, "--org", org)["status"] == "paused"
    add_rows(src, 30_001, 31_000)
    p = cli(server, "job", "run", jid, "--org", org, check=False)
    assert p.returncode != 0 and "paused" in p.stderr, p.stderr
    before = len(queries())
    # Due (its next query long past) while paused: ten scheduler polls
    # later it still made none.
    server.store_sql(f"UPDATE import_jobs SET next_query_at = 1 WHERE id = '{jid}'")
    time.sleep(2)
    assert len(queries()) == before, "a paused job made a query"
    assert server.store_sql(f"SELECT next_query_at FROM import_jobs WHERE id = '{jid}'") == "1"

    # Resumed: the next query is due at once and loads the new rows.
    assert cli_json(server, "job", "resume", jid, "--org", org)["status"] == "active"
    wait_for(lambda: len([q for q in queries() if q["status"] == "SUCCEEDED"]) == 3,
             "the query after resume")
    assert queries()[0]["records"] == 1_000 and queries()[0]["trigger"] == "schedule"
    assert fingerprint(dst, "preds") == fingerprint(src, "preds")

    # A window run again by hand replaces its rows (the source changed there).
    psql(src, "UPDATE preds SET actual = 'changed' WHERE prediction_id BETWEEN 3600 AND 7199")
    run = cli_json(server, "job", "run", jid, "--org", org,
                   "--start", "2026-01-01T01:00:00Z", "--end", "2026-01-01T02:00:00Z")
    assert (run["status"], run["records"], run["trigger"]) == ("SUCCEEDED", 3600, "window")
    assert fingerprint(dst, "preds") == fingerprint(src, "preds")
    assert psql(dst, "SELECT count(*) FROM preds WHERE actual = 'changed'") == "3600"

    # A new mapping: one more column, added to the target and reported.
    g = job_toml(tmp_path / "more.toml", src, dst)
    g.write_text("\n".join(l for l in g.read_text().splitlines()
                           if not l.startswith(("name", "source", "table", "destination", "target")))
                 .replace('tags = "tag_"', 'tagsList = ["tag_region", "model_version"]'))
    cli_json(server, "job", "update", jid, "--org", org, "--file", str(g))
    add_rows(src, 31_001, 31_010)
    run = cli_json(server, "job", "run", jid, "--org", org)
    assert run["records"] == 10
    tasks = cli_json(server, "job", "tasks", run["id"], "--org", org)
    assert "schema change: new column model_version text" in tasks[1]["messages"], tasks[1]

    # Deleted: gone from the list, readable as deleted, runs nothing.
    assert cli_json(server, "job", "delete", jid, "--org", org)["status"] == "deleted"
    assert cli_json(server, "job", "list", "--org", org) == []
    assert [j["status"] for j in cli_json(server, "job", "list", "--org", org, "--all")] == ["deleted"]
    assert cli(server, "job", "run", jid, "--org", org, check=False).returncode != 0


class Metadata:
    """Reads the metadata store straight (polling through the CLI would be
    too slow to catch a short extraction): SQLite or PostgreSQL."""

    def __init__(self, s):
        if s.database_url:
            import psycopg
            self.db, self.mark = psycopg.connect(s.database_url, autocommit=True), "%s"
        else:
            self.db, self.mark = sqlite3.connect(s.data_dir / "sluice.db", timeout=30), "?"

    def rows(self, sql, arg):
        return self.db.execute(sql.replace("%s", self.mark), (arg,)).fetchall()


def loads_of(dst, jid):
    return int(psql(dst, f"SELECT count(*) FROM sluice_load_ledger WHERE job = '{jid}'"))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_job_runs_killed_during_extraction_and_load_then_every_row_exactly_once(backend, dbs, tmp_path):
    src, dst = dbs
    psql(src, SOURCE)
    add_rows(src, 1, 50_000, pad=100)
    url = fresh_postgres_database() if backend == "postgres" else None
    s = Sluice(tmp_path, url, env={"SLUICE_LEASE_TTL_SECS": "2", "SLUICE_HEARTBEAT_MS": "300",
                                   "SLUICE_POLL_MS": "100"}, worker=False)
    try:
        org = s.new_org()[0]
        f = job_toml(tmp_path / "job.toml", src, dst)
        jid = cli_json(s, "job", "create", "--org", org, "--file", str(f))["job"]["id"]
        assert cli_json(s, "job", "run", jid, "--org", org)["records"] == 50_000
        # A warehouse whose commit takes a while (a deferred check on every
        # row), so that kills land after extraction too, while the load ends.
        psql(dst, """CREATE FUNCTION slow_check() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN PERFORM md5(repeat(NEW.prediction, 20)); RETURN NULL; END $$;
            CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON preds DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW EXECUTE FUNCTION slow_check()""")
        phases = {"extract": 0, "load": 0, "finished": 0}
        last = 50_000
        seen = cli_json(s, "job", "queries", jid, "--org", org, "--limit", "1")[0]["id"]

        meta = Metadata(s)

        def tasks_of_new_query():
            row = meta.rows("SELECT id FROM import_queries WHERE job_id = %s "
                            "ORDER BY seq DESC LIMIT 1", jid)
            if not row or row[0][0] == seen:
                return None
            return dict(meta.rows("SELECT name, status FROM import_tasks WHERE query_id = %s",
                                  row[0][0]))

        def in_phase(during):
            t = tasks_of_new_query() or {}
            if during == "extract":
                return t.get("extract") == "RUNNING" and t.get("load") == "RUNNING"
            return t.get("extract") == "SUCCEEDED" and "RUNNING" in (t.get("load"), t.get("complete"))

        # Each kill is proven mid-flight: the importer is stopped (SIGSTOP)
        # before its tasks and the ledger are read the last time, so a stopped
        # importer that is still in the phase and has not committed its
        # window cannot commit it before the SIGKILL lands. Otherwise it goes
        # on (SIGCONT) and is looked at again.
        attempts = 0
        while (phases["extract"] < 3 or phases["load"] < 3) and attempts < 12:
            attempts += 1
            during = "extract" if phases["extract"] <= phases["load"] else "load"
            loads_before = loads_of(dst, jid)
            p = subprocess.Popen([BIN, "job", "run", jid, "--org", org, "--json", *s.store_args()],
                                 env=s.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            killed = False
            while p.poll() is None and not killed:
                if in_phase(during):
                    p.send_signal(signal.SIGSTOP)
                    if in_phase(during) and loads_of(dst, jid) == loads_before:
                        p.send_signal(signal.SIGKILL)
                        killed = True
                    else:
                        p.send_signal(signal.SIGCONT)
                time.sleep(0.002)
            p.wait()
            if killed:
                phases[during] += 1
            else:
                assert p.returncode == 0, p.stderr.read().decode()
                phases["finished"] += 1
            seen = cli_json(s, "job", "queries", jid, "--org", org, "--limit", "1")[0]["id"]
            # A window that streams for a while, so that the phase can be
            # caught, on a busy machine too.
            add_rows(src, last + 1, last + 40_000, pad=100)
            last += 40_000
        print("kills by phase:", phases)
        assert phases["extract"] >= 3 and phases["load"] >= 3, phases
        # The server's importer gives the lost queries back once their leases
        # run out; each loads nothing twice. Then the rest by hand.
        s.stop()
        s = Sluice(tmp_path, url, env={"SLUICE_LEASE_TTL_SECS": "2", "SLUICE_HEARTBEAT_MS": "300",
                                       "SLUICE_POLL_MS": "100"})
        wait_for(lambda: all(q["status"] in ("SUCCEEDED", "FAILED", "CANCELLED")
                             for q in cli_json(s, "job", "queries", jid, "--org", org, "--limit", "100")),
                 "the lost queries to end", timeout=120)
        while cli_json(s, "job", "run", jid, "--org", org)["records"] > 0:
            pass
        assert fingerprint(dst, "preds") == fingerprint(src, "preds")
        count, distinct, _ = fingerprint(dst, "preds").split(":")
        assert count == distinct == str(last)
    finally:
        s.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_query_cancelled_during_load_leaves_the_table_as_it_was(backend, dbs, tmp_path):
    src, dst = dbs
    psql(src, SOURCE)
    add_rows(src, 1, 1_000)
    url = fresh_postgres_database() if backend == "postgres" else None
    s = Sluice(tmp_path, url, env={"SLUICE_HEARTBEAT_MS": "100", "SLUICE_POLL_MS": "100"},
               worker=False)
    try:
        org = s.new_org()[0]
        f = job_toml(tmp_path / "job.toml", src, dst)
        jid = cli_json(s, "job", "create", "--org", org, "--file", str(f))["job"]["id"]
        cli_json(s, "job", "run", jid, "--org", org)
        before = fingerprint(dst, "preds")
        add_rows(src, 1_001, 400_000)
        p = subprocess.Popen([BIN, "job", "run", jid, "--org", org, "--json", *s.store_args()],
                             env=s.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

        def loading():
            q = cli_json(s, "job", "queries", jid, "--org", org, "--limit", "1")[0]
            tasks = {t["name"]: t for t in cli_json(s, "job", "tasks", q["id"], "--org", org)}
            return q if tasks.get("load", {}).get("status") == "RUNNING" else None

        q = wait_for(loading, "the load to start", interval=0.02)
        cli_json(s, "job", "cancel", q["id"], "--org", org)
        out, err = p.communicate(timeout=60)
        assert p.returncode != 0
        ended = json.loads(out)
        assert ended["status"] == "CANCELLED", ended
        assert fingerprint(dst, "preds") == before
        # The window is still to load: the next query loads it whole.
        run = cli_json(s, "job", "run", jid, "--org", org)
        assert run["records"] == 399_000
        assert fingerprint(dst, "preds") == fingerprint(src, "preds")
    finally:
        s.stop()
