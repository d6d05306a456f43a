"""The Tailer-style action API, driven as its users drive it: Tailer's own
table-to-table configuration files deployed with `sluice config deploy`, the
token taken with the documented shell pipelines, and every `curl` of the
API's table-to-table documentation run verbatim with the real curl binary
(host, token and ids replaced) — on SQLite and PostgreSQL metadata, into
the embedded warehouse and into a PostgreSQL warehouse.
"""
import json
import re
import sqlite3
import subprocess
import time
from datetime import date, datetime

import pytest

from conftest import BIN, PG_ADMIN, postgres_databases, psql, wait_for

ACCOUNT = "000099"
CONF = "000099_iowa_liquor_prepare_pda"
API_ID = CONF + "_DEV"
JOB = "gbq-to-gbq|" + API_ID

TTT = {
    "$schema": "http://jsonschema.tailer.ai/schema/table-to-table-veditor",
    "configuration_type": "table-to-table",
    "configuration_id": CONF,
    "short_description": "Prepare the Iowa liquor PDA",
    "account": ACCOUNT,
    "environment": "DEV",
    "start_date": "2024, 1, 1",
    "schedule_interval": "None",
    "default_gcp_project_id": "acme-dlk",
    "default_bq_dataset": "sales_pda",
    "default_write_disposition": "WRITE_TRUNCATE",
    "task_dependencies": [
        "[load_sales, create_sales_agg] >> fill_sales_agg >> check_sales_agg",
        "load_sales >> load_stores",
    ],
    "workflow": [
        {"id": "load_sales", "task_type": "sql", "sql_file": "load_sales.sql", "table_name": "sales",
         "bq_dataset": "raw"},
        {"id": "load_stores", "task_type": "sql", "sql_file": "load_stores.sql",
         "table_name": "stores_{{FD_DATE}}", "bq_dataset": "raw", "write_disposition": "WRITE_APPEND"},
        {"id": "create_sales_agg", "task_type": "create_gbq_table", "bq_table": "sales_agg",
         "ddl_file": "sales_agg_DDL.json", "force_delete": False},
        {"id": "fill_sales_agg", "task_type": "sql", "sql_file": "fill_sales_agg.sql",
         "table_name": "sales_agg"},
        {"id": "check_sales_agg", "task_type": "expectation", "sql_file": "check_sales_agg.sql",
         "criticality": "warning"},
    ],
}
DDL = {"bq_table_description": "Sales by store",
       "bq_table_schema": [{"name": "store", "type": "STRING", "description": "store"},
                           {"name": "total", "type": "INTEGER", "description": "sum", "mode": "REQUIRED"}]}
SQL = {
    "load_sales.sql": "SELECT 'a' AS store, 5 AS amount UNION ALL SELECT 'a', 7 UNION ALL SELECT 'b', 1",
    "load_stores.sql": "SELECT 'a' AS store, 'Des Moines' AS city UNION ALL SELECT 'b', 'Ames'",
    "fill_sales_agg.sql": "SELECT store, SUM(amount) FROM raw.sales GROUP BY store",
    "check_sales_agg.sql": "SELECT COUNT(*) = 2 FROM sales_pda.sales_agg",
}


def write_config(folder, config=TTT, sql=SQL):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "conf.json").write_text(json.dumps(config))
    (folder / "sales_agg_DDL.json").write_text(json.dumps(DDL))
    for name, text in sql.items():
        (folder / name).write_text(text)
    return folder / "conf.json"


def shell(cmd, **kw):
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, check=True, **kw).stdout


class Tailer:
    """An organization of account 000099 on a running sluice, its token
    taken as the documentation takes it, and curl as its users run it."""

    def __init__(self, sluice, tmp, warehouse_url, account=ACCOUNT):
        self.s = sluice
        self.org = sluice.cli_json("org", "create", "iowa-" + account, "--account", account)["organization_id"]
        sluice.cli("user", "create", "--org", self.org, f"data-{account}@example.com")
        sluice.cli("warehouse", "add", "acme-dlk", warehouse_url, "--org", self.org)
        self.account = account
        self.tmp = tmp
        store = " ".join(sluice.store_args())
        # The documented pipelines, both: line 7, and the awk form.
        self.token = shell(f"{BIN} auth get-token --org {self.org} {store} | sed '7q;d' | "
                           f"sed 's/User token : //g'").strip()
        awk = shell(f"{BIN} auth get-token --org {self.org} {store} | awk '/User token :/ {{print $4}}'").strip()
        assert self.token.count(".") == 2 and awk.count(".") == 2, (self.token, awk)

    def curl(self, path, data, token=None, http="--http2"):
        """The documentation's curl, host and token replaced: answers
        (status, JSON body)."""
        out = subprocess.run(
            ["curl", "--silent", "--show-error", "--request", "POST", http,
             "--header", "content-type:application/json",
             "--header", f"Authorization: Bearer {token or self.token}",
             "--data", data, "--write-out", "\n%{http_code} %{http_version}", self.s.url + path],
            capture_output=True, text=True, check=True)
        body, status = out.stdout.rsplit("\n", 1)
        code, version = status.split()
        if http == "--http2-prior-knowledge":
            assert version == "2", version
        return int(code), json.loads(body)


def launch_curl(t, configuration_id=API_ID, extra=""):
    return t.curl("/v1/dag/launch", '''{ "action": "launch_job",
"account": "%s",
"environment": "DEV",
"configuration_type": "table-to-table",
"configuration_id": "%s"%s}''' % (t.account, configuration_id, extra))


def check_curl(t, run_id, configuration_id=API_ID):
    return t.curl("/v1/dag/status", '''{"action": "check_run_status",
"account": "%s",
"environment": "DEV",
"configuration_type": "table-to-table",
"configuration_id": "%s",
"job_id": "gbq-to-gbq|%s",
"run_id": "%s"}''' % (t.account, configuration_id, configuration_id, run_id))


def last_status_curl(t, extra=""):
    return t.curl("/v1/dag/status", '''{ "action": "get_last_status",
"account": "%s",
"environment": "DEV",
"configuration_type": "table-to-table",
"configuration_id": "%s"%s}''' % (t.account, API_ID, extra))


def configuration_status_curl(t, activated, archived):
    return t.curl("/v1/configuration/status", '''{ "action": "set_configuration_status",
"activated" : %s,
"archived" : %s,
"account": "%s",
"environment": "DEV",
"configuration_type": "table-to-table",
"configuration_id": "%s"}''' % (json.dumps(activated), json.dumps(archived), t.account, API_ID))


RESULT_KEYS = {"account", "configuration_id", "configuration_type", "duration", "environment", "job_id",
               "last_update_date", "run_id", "start_execution_date", "status"}
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")


def wait_run(t, run_id, configuration_id=API_ID):
    def ended():
        code, body = check_curl(t, run_id, configuration_id)
        assert code == 200, body
        st = body["results"][0]["status"]
        return body if st != "RUNNING" else None
    return wait_for(ended, f"run {run_id}", timeout=60, interval=0.1)


def rows(warehouse, folder_of_org, sql):
    if warehouse.startswith("postgres"):
        return psql(warehouse, sql)
    db = sqlite3.connect(":memory:")
    for f in folder_of_org.glob("*.db"):
        if f.stem != "_sluice":
            db.execute(f"ATTACH DATABASE '{f}' AS {f.stem}")
    out = db.execute(sql).fetchall()
    return "\n".join("|".join(str(v) for v in r) for r in out)


def drop_roles(*orgs):
    """The warehouse roles sluice made for these organizations (roles are the
    server's, not a database's; their databases are dropped first)."""
    for org in orgs:
        psql(PG_ADMIN, f'DROP ROLE IF EXISTS "sluice_org_{org}"')


@pytest.mark.parametrize("warehouse", ["embedded", "postgres"])
def test_tailer_files_deploy_and_every_table_to_table_curl_works(sluice, tmp_path, warehouse):
    orgs = []
    try:
        with postgres_databases("sluice_wh", 1) as (pg,):
            main_test(sluice, tmp_path, warehouse, pg, orgs)
    finally:
        drop_roles(*orgs)


def main_test(sluice, tmp_path, warehouse, pg, orgs):
    url = pg if warehouse == "postgres" else "embedded"
    t = Tailer(sluice, tmp_path, url)
    orgs.append(t.org)
    conf = write_config(tmp_path / "conf")
    out = sluice.cli("config", "deploy", str(conf), "--org", t.org)
    assert out.splitlines()[0] == f"Configuration successfully deployed with ID : {API_ID}", out
    folder = sluice.data_dir / "warehouse" / "actions" / t.org
    check = url if warehouse == "postgres" else None

    # Launch, as documented; the run id is Tailer's shape.
    code, body = launch_curl(t)
    assert code == 200 and set(body) == {"run_id"}, body
    assert re.match(r"^\d{8}-\d{6}-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$",
                    body["run_id"]), body
    first = body["run_id"]
    done = wait_run(t, first)
    [r] = done["results"]
    assert set(r) == RESULT_KEYS, r
    assert r["status"] == "SUCCESS", json.loads(sluice.cli("config", "status", API_ID, "--org", t.org,
                                                           "--json"))["runs"][0]["error"]
    assert (r["account"], r["configuration_id"], r["configuration_type"], r["environment"], r["job_id"]) == \
        (ACCOUNT, API_ID, "table-to-table", "DEV", JOB)
    assert re.match(r"^\d+:\d\d:\d\d\.\d{6}$", r["duration"]), r
    assert ISO.match(r["last_update_date"]) and ISO.match(r["start_execution_date"]), r

    # The tables hold what the SQL made, the dated table its day's name.
    day = date.today().strftime("%Y%m%d")
    assert rows(check or "", folder, "SELECT store, total FROM sales_pda.sales_agg ORDER BY store") == \
        "a|12\nb|1"
    assert rows(check or "", folder, f"SELECT COUNT(*) FROM raw.stores_{day}") == "2"
    status = json.loads(sluice.cli("config", "status", API_ID, "--org", t.org, "--json"))
    tasks = {x["task_id"]: x for x in status["runs"][0]["tasks"]}
    assert {k: v["status"] for k, v in tasks.items()} == {
        "load_sales": "SUCCEEDED", "load_stores": "SUCCEEDED", "create_sales_agg": "SUCCEEDED",
        "fill_sales_agg": "SUCCEEDED", "check_sales_agg": "SUCCEEDED"}
    assert tasks["fill_sales_agg"]["rows"] == 2 and tasks["load_sales"]["rows"] == 3, tasks
    # The DAG's order held: fill ran after both of its parents ended.
    when = lambda x: datetime.fromisoformat(x.replace("Z", "+00:00"))  # noqa: E731
    assert when(tasks["fill_sales_agg"]["started_at"]) >= max(when(tasks["load_sales"]["finished_at"]),
                                                               when(tasks["create_sales_agg"]["finished_at"]))

    # Two more runs, one with an execution date: get_last_status lists
    # them newest first, as the documentation's job example shows.
    code, second = launch_curl(t)
    assert code == 200
    wait_run(t, second["run_id"])
    code, third = launch_curl(t, extra=',\n"execution_date": "2020-12-30"')
    assert code == 200
    wait_run(t, third["run_id"])
    # WRITE_APPEND into the dated table: once a run, never twice.
    assert rows(check or "", folder, f"SELECT COUNT(*) FROM raw.stores_{day}") == "4"
    assert rows(check or "", folder, "SELECT COUNT(*) FROM raw.stores_20201230") == "2"
    code, body = last_status_curl(t)
    assert code == 200, body
    assert [x["run_id"] for x in body["results"]] == [third["run_id"], second["run_id"], first], body
    assert all(set(x) == RESULT_KEYS and x["configuration_type"] == "gbq-to-gbq" for x in body["results"])
    # With the documentation's filters: execution date, status, limit.
    code, body = last_status_curl(
        t, extra=',\n"execution_date": "%s",\n"status": "SUCCESS",\n"limit": 1' % date.today().isoformat())
    assert code == 200 and [x["run_id"] for x in body["results"]] == [second["run_id"]], body

    # HTTP/2 with prior knowledge answers the same.
    code, body = t.curl("/v1/dag/status", json.dumps({
        "action": "check_run_status", "account": ACCOUNT, "environment": "DEV",
        "configuration_type": "table-to-table", "configuration_id": API_ID, "job_id": JOB,
        "run_id": first}), http="--http2-prior-knowledge")
    assert code == 200 and body["results"][0]["run_id"] == first

    # Disable: {"code": 200, "data": {}, "message": "ok"}; no launch.
    assert configuration_status_curl(t, False, False) == (200, {"code": 200, "data": {}, "message": "ok"})
    code, body = launch_curl(t)
    assert code == 409 and "deactivated" in body["error_description"], body
    assert configuration_status_curl(t, True, False)[0] == 200
    code, body = launch_curl(t)
    assert code == 200, body
    wait_run(t, body["run_id"])
    # Archive: hidden from the list, cannot be launched.
    assert configuration_status_curl(t, False, True) == (200, {"code": 200, "data": {}, "message": "ok"})
    code, body = launch_curl(t)
    assert code == 404 and API_ID in body["error_description"], body
    listed = json.loads(sluice.cli("config", "list", "--org", t.org, "--json"))
    assert API_ID not in [c["id"] for c in listed], listed
    listed = json.loads(sluice.cli("config", "list", "--org", t.org, "--json", "--archived"))
    assert API_ID in [c["id"] for c in listed], listed
    psql(PG_ADMIN, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   f"WHERE datname = '{pg.rsplit('/', 1)[1]}' AND pid <> pg_backend_pid()")


def test_bad_requests_and_other_accounts_get_json_errors_never_5xx(sluice, tmp_path):
    t = Tailer(sluice, tmp_path, "embedded")
    sluice.cli("config", "deploy", str(write_config(tmp_path / "a")), "--org", t.org)
    other = Tailer(sluice, tmp_path, "embedded", account="000100")
    cases = [
        # (token, path, body, status, words in the error)
        (None, "/v1/dag/launch", {"action": "explode", "account": ACCOUNT}, 400, "explode"),
        (None, "/v1/dag/launch", {"account": ACCOUNT}, 400, "action is required"),
        (None, "/v1/dag/status", {"action": "check_run_status", "account": ACCOUNT, "environment": "DEV",
                                  "configuration_type": "table-to-table", "configuration_id": API_ID},
         400, "run_id"),
        (None, "/v1/dag/launch", {"action": "launch_job", "account": ACCOUNT, "environment": "DEV",
                                  "configuration_type": "table-to-table", "configuration_id": "nope_DEV"},
         404, "nope_DEV"),
        (None, "/v1/dag/status", {"action": "check_run_status", "account": ACCOUNT, "environment": "DEV",
                                  "configuration_type": "table-to-table", "configuration_id": API_ID,
                                  "run_id": "20201230-112837-0a795c70-2557-4a60-ba16-788aa2bea179"},
         404, "20201230-112837"),
        (None, "/v1/dag/launch", {"action": "launch_job", "account": ACCOUNT, "environment": "DEV",
                                  "configuration_type": "table-to-table", "configuration_id": API_ID,
                                  "execution_date": "yesterday"}, 400, "execution_date"),
        (None, "/v1/configuration/status", {"action": "set_configuration_status", "account": ACCOUNT,
                                            "configuration_type": "table-to-table", "configuration_id": API_ID},
         400, "activated"),
        # Another account's token: its own account named, or this one.
        (other.token, "/v1/dag/launch", {"action": "launch_job", "account": ACCOUNT, "environment": "DEV",
                                         "configuration_type": "table-to-table", "configuration_id": API_ID},
         403, "000100"),
        (other.token, "/v1/dag/launch", {"action": "launch_job", "account": "000100", "environment": "DEV",
                                         "configuration_type": "table-to-table", "configuration_id": API_ID},
         404, API_ID),
        ("not.a.jwt", "/v1/dag/launch", {"action": "launch_job", "account": ACCOUNT}, 401, ""),
    ]
    for token, path, body, status, words in cases:
        code, answer = t.curl(path, json.dumps(body), token=token)
        assert code == status, (path, body, code, answer)
        assert words in answer["error_description"], (body, answer)
    # A personal access token is not the action API's credential.
    res = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                          "-u", "user-1:tok", "--data", "{}", sluice.url + "/v1/dag/launch"],
                         capture_output=True, text=True)
    assert res.stdout == "401"
    # Nothing ran for any of them.
    code, body = last_status_curl(t)
    assert code == 200 and body["results"] == [], body


def test_a_file_with_errors_is_refused_naming_every_problem_and_nothing_is_stored(sluice, tmp_path):
    t = Tailer(sluice, tmp_path, "embedded")
    bad = json.loads(json.dumps(TTT))
    bad["workflow"][0]["id"] = "load-sales"
    bad["workflow"][3]["sql_file"] = "missing.sql"
    bad["task_dependencies"].append("check_sales_agg >> ghost")
    del bad["default_bq_dataset"]
    conf = write_config(tmp_path / "bad", bad)
    res = subprocess.run([BIN, "config", "deploy", str(conf), "--org", t.org, *sluice.store_args()],
                         capture_output=True, text=True)
    assert res.returncode != 0
    for words in ("workflow[0].id: `load-sales` is not a task id", "default_bq_dataset: required",
                  "workflow[3].sql_file: file `missing.sql` was not found", "task `ghost` is not in workflow"):
        assert words in res.stderr, res.stderr
    assert json.loads(sluice.cli("config", "list", "--org", t.org, "--json", "--archived")) == []
    # Another account's file is refused.
    other = json.loads(json.dumps(TTT))
    other["account"] = "000555"
    res = subprocess.run([BIN, "config", "deploy", str(write_config(tmp_path / "o", other)), "--org", t.org,
                          *sluice.store_args()], capture_output=True, text=True)
    assert res.returncode != 0 and "000555" in res.stderr, res.stderr
    # A project that is no warehouse of the organization is named.
    far = json.loads(json.dumps(TTT))
    far["default_gcp_project_id"] = "elsewhere"
    res = subprocess.run([BIN, "config", "deploy", str(write_config(tmp_path / "f", far)), "--org", t.org,
                          *sluice.store_args()], capture_output=True, text=True)
    assert res.returncode != 0 and "project `elsewhere` is not a warehouse" in res.stderr, res.stderr


def test_context_constants_redeploys_and_failures_follow_criticality(sluice, tmp_path):
    t = Tailer(sluice, tmp_path, "embedded")
    ctx = {"configuration_type": "context", "configuration_id": "ctx_dev", "environment": "DEV",
           "account": ACCOUNT, "gcp_project_id": "acme-dlk",
           "parameters": {"dlk": {"value": "acme-dlk", "type": "string", "resource": "gcp_project_id",
                                  "description": "the lake"},
                          "threshold": {"value": 2, "type": "integer", "resource": "value",
                                        "description": "rows"}}}
    (tmp_path / "ctx.json").write_text(json.dumps(ctx))
    out = sluice.cli("config", "deploy", str(tmp_path / "ctx.json"), "--org", t.org)
    assert out.startswith("Configuration successfully deployed with ID : ctx_dev"), out
    conf = json.loads(json.dumps(TTT))
    conf["default_gcp_project_id"] = "{{dlk}}"
    sql = dict(SQL, **{"check_sales_agg.sql": "SELECT COUNT(*) = {{threshold}} FROM sales_pda.sales_agg"})
    path = write_config(tmp_path / "c", conf, sql)
    out = sluice.cli("config", "deploy", str(path), "--org", t.org, "--context", "ctx_dev")
    deployed = f"{ACCOUNT}_ctx_dev_{CONF}"
    assert out.splitlines()[0] == f"Configuration successfully deployed with ID : {deployed}", out
    code, body = launch_curl(t, deployed)
    assert code == 200, body
    first = wait_run(t, body["run_id"], deployed)["results"][0]
    assert first["status"] == "SUCCESS" and first["job_id"] == f"gbq-to-gbq|{deployed}", first

    # Redeployed with a failing warning expectation: the run ends WARNING;
    # the earlier run keeps its version.
    sql["check_sales_agg.sql"] = "SELECT COUNT(*) = 99 FROM sales_pda.sales_agg"
    sluice.cli("config", "deploy", str(write_config(tmp_path / "c", conf, sql)), "--org", t.org,
               "--context", "ctx_dev")
    code, body = launch_curl(t, deployed)
    warned = wait_run(t, body["run_id"], deployed)["results"][0]
    assert warned["status"] == "WARNING", warned
    status = json.loads(sluice.cli("config", "status", deployed, "--org", t.org, "--json"))
    assert status["version"] == 2
    [check] = [x for x in status["runs"][0]["tasks"] if x["task_id"] == "check_sales_agg"]
    assert check["status"] == "FAILED" and "COUNT(*) = 99" in " ".join(check["messages"]), check

    # A critical failure fails the run, skips what depends on it, and the
    # failed run can be set CHECKED, then found by status.
    conf["workflow"][0]["sql_file"] = "broken.sql"
    sql["broken.sql"] = "SELECT nope FROM nowhere"
    sluice.cli("config", "deploy", str(write_config(tmp_path / "c", conf, sql)), "--org", t.org,
               "--context", "ctx_dev")
    code, body = launch_curl(t, deployed)
    failed = wait_run(t, body["run_id"], deployed)["results"][0]
    assert failed["status"] == "FAILED", failed
    status = json.loads(sluice.cli("config", "status", deployed, "--org", t.org, "--json"))
    tasks = {x["task_id"]: x["status"] for x in status["runs"][0]["tasks"]}
    assert tasks["load_sales"] == "FAILED" and tasks["check_sales_agg"] in ("WAITING", "SKIPPED"), tasks
    assert "nowhere" in status["runs"][0]["error"], status
    code, body = t.curl("/v1/dag/status", json.dumps({
        "action": "set_run_status", "account": ACCOUNT, "environment": "DEV",
        "configuration_type": "table-to-table", "configuration_id": deployed,
        "job_id": f"gbq-to-gbq|{deployed}", "run_id": failed["run_id"], "status": "CHECKED"}))
    assert code == 200 and body["results"][0]["status"] == "CHECKED", body
    code, body = t.curl("/v1/dag/status", json.dumps({"action": "get_by_status", "account": ACCOUNT,
                                                      "status": "CHECKED"}))
    assert code == 200 and [x["run_id"] for x in body["results"]] == [failed["run_id"]], body


@pytest.mark.parametrize("warehouse", ["embedded", "postgres"])
def test_one_organizations_sql_cannot_touch_anothers_tables(sluice, tmp_path, warehouse):
    orgs = []
    try:
        with postgres_databases("sluice_wh", 1) as (pg,):
            url = pg if warehouse == "postgres" else "embedded"
            a = Tailer(sluice, tmp_path, url)
            orgs.append(a.org)
            b = Tailer(sluice, tmp_path, url, account="000100")
            orgs.append(b.org)
            steal(sluice, tmp_path, a, b, pg if warehouse == "postgres" else None)
    finally:
        drop_roles(*orgs)


def steal(sluice, tmp_path, a, b, pg):
    sluice.cli("config", "deploy", str(write_config(tmp_path / "a")), "--org", a.org)
    code, body = launch_curl(a)
    assert wait_run(a, body["run_id"])["results"][0]["status"] == "SUCCESS"
    a_folder = sluice.data_dir / "warehouse" / "actions" / a.org
    query = "SELECT store, total FROM sales_pda.sales_agg ORDER BY store"
    before = rows(pg or "", a_folder, query)
    assert before == "a|12\nb|1"
    if pg:
        attempts = {
            "read_by_name": "SELECT * FROM sales_pda.sales_agg",
            "reset_role": "RESET ROLE; DELETE FROM sales_pda.sales_agg",
            "set_role": "SET ROLE postgres; DELETE FROM sales_pda.sales_agg",
            "session": "SET SESSION AUTHORIZATION postgres; DELETE FROM sales_pda.sales_agg",
        }
    else:
        attempts = {
            "attach": f"ATTACH DATABASE '{a_folder / 'sales_pda.db'}' AS theirs",
            "read_by_name": "SELECT * FROM sales_pda.sales_agg",
            "vacuum_into": f"VACUUM INTO '{a_folder / 'stolen.db'}'",
        }
    for name, text in attempts.items():
        conf = {**TTT, "account": "000100", "configuration_id": f"000100_{name}",
                "task_dependencies": ["steal"],
                "workflow": [{"id": "steal", "task_type": "sql", "sql_file": "steal.sql"}]}
        path = write_config(tmp_path / name, conf, {"steal.sql": text})
        sluice.cli("config", "deploy", str(path), "--org", b.org)
        code, body = launch_curl(b, f"000100_{name}_DEV")
        assert code == 200, body
        result = wait_run(b, body["run_id"], f"000100_{name}_DEV")["results"][0]
        assert result["status"] == "FAILED", (name, result)
        status = json.loads(sluice.cli("config", "status", f"000100_{name}_DEV", "--org", b.org, "--json"))
        error = status["runs"][0]["error"]
        assert any(w in error for w in ("permission denied", "not authorized", "authorization denied",
                                        "no such table", "cannot VACUUM")), (name, error)
    assert not (a_folder / "stolen.db").exists()
    assert rows(pg or "", a_folder, query) == before


def test_break_skips_dependents_and_transparent_lets_them_run(sluice, tmp_path):
    t = Tailer(sluice, tmp_path, "embedded")
    conf = {**TTT, "configuration_id": "000099_crit",
            "task_dependencies": ["breaks >> after_break", "see_through >> after_see_through", "alone"],
            "workflow": [
                {"id": "breaks", "sql_file": "bad.sql", "criticality": "break"},
                {"id": "after_break", "sql_file": "ok.sql", "table_name": "b", "bq_dataset": "raw"},
                {"id": "see_through", "sql_file": "bad.sql", "criticality": "transparent"},
                {"id": "after_see_through", "sql_file": "ok.sql", "table_name": "s", "bq_dataset": "raw",
                 "criticality": "warning"},
                {"id": "alone", "sql_file": "ok.sql", "table_name": "a", "bq_dataset": "raw"},
            ]}
    sluice.cli("config", "deploy", str(write_config(tmp_path / "k", conf,
                                                      {"bad.sql": "SELECT nope FROM nowhere",
                                                       "ok.sql": "SELECT 1 AS x"})), "--org", t.org)
    code, body = launch_curl(t, "000099_crit_DEV")
    assert code == 200, body
    result = wait_run(t, body["run_id"], "000099_crit_DEV")["results"][0]
    assert result["status"] == "SUCCESS", result
    status = json.loads(sluice.cli("config", "status", "000099_crit_DEV", "--org", t.org, "--json"))
    tasks = {x["task_id"]: x["status"] for x in status["runs"][0]["tasks"]}
    assert tasks == {"breaks": "FAILED", "after_break": "SKIPPED", "see_through": "FAILED",
                     "after_see_through": "SUCCEEDED", "alone": "SUCCEEDED"}, tasks


def test_table_to_storage_writes_each_querys_rows_as_a_file(sluice, tmp_path):
    import csv
    import gzip
    import io
    t = Tailer(sluice, tmp_path, "embedded")
    sluice.cli("bucket", "add", "acme-out", "local", "--org", t.org)
    # The tables first, with the documentation's table-to-table file.
    sluice.cli("config", "deploy", str(write_config(tmp_path / "ttt")), "--org", t.org)
    code, body = launch_curl(t)
    assert wait_run(t, body["run_id"])["results"][0]["status"] == "SUCCESS"
    tts = {"configuration_type": "table-to-storage", "configuration_id": "000099_extract_sales",
           "environment": "DEV", "account": ACCOUNT, "version": "3", "gcp_project_id": "acme-dlk",
           "gcs_dest_bucket": "acme-out", "gcs_dest_prefix": "sales/{{FD_DATE}}", "field_delimiter": ";",
           "compression": "GZIP", "generate_top_file": True, "delete_dest_bucket_content": True,
           "tasks": [
               {"task_id": "export_agg", "sql_file": "agg.sql", "output_filename": "agg_{{FD_DATE}}_{{FD_TIME}}.csv"},
               {"task_id": "export_raw", "sql_file": "raw.sql", "output_filename": "raw_{{FD_DATE}}.json",
                "destination_format": "NEWLINE_DELIMITED_JSON", "compression": "None"}]}
    folder = tmp_path / "tts"
    folder.mkdir()
    (folder / "conf.json").write_text(json.dumps(tts))
    (folder / "agg.sql").write_text("SELECT store, total FROM sales_pda.sales_agg ORDER BY store")
    (folder / "raw.sql").write_text("SELECT store, amount FROM raw.sales ORDER BY amount")
    out = sluice.cli("config", "deploy", str(folder / "conf.json"), "--org", t.org)
    assert out.splitlines()[0] == "Configuration successfully deployed with ID : 000099_extract_sales", out

    def launch_export():
        code, body = t.curl("/v1/dag/launch", json.dumps({
            "action": "launch_job", "account": ACCOUNT, "environment": "DEV",
            "configuration_type": "table-to-storage", "configuration_id": "000099_extract_sales"}))
        assert code == 200, body
        code, done = t.curl("/v1/dag/status", json.dumps({
            "action": "check_run_status", "account": ACCOUNT, "environment": "DEV",
            "configuration_type": "table-to-storage", "configuration_id": "000099_extract_sales",
            "job_id": "table-to-storage|000099_extract_sales", "run_id": body["run_id"]}))
        assert code == 200, done
        return wait_run_any(t, body["run_id"])

    def files():
        root = sluice.data_dir / "buckets" / t.org / "acme-out" / "sales" / date.today().strftime("%Y%m%d")
        return sorted(p.name for p in root.iterdir()), root

    assert launch_export() == "SUCCESS"
    names, root = files()
    day = date.today().strftime("%Y%m%d")
    [agg] = [n for n in names if n.startswith("agg_") and n.endswith(".csv.gz")]
    assert re.match(rf"^agg_{day}_\d{{6}}-000000000000\.csv\.gz$", agg), names
    assert f"raw_{day}-000000000000.json" in names and f"raw_{day}.top" in names, names
    rows = list(csv.reader(io.StringIO(gzip.decompress((root / agg).read_bytes()).decode()), delimiter=";"))
    assert rows == [["store", "total"], ["a", "12"], ["b", "1"]], rows
    lines = (root / f"raw_{day}-000000000000.json").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [{"store": "b", "amount": 1}, {"store": "a", "amount": 5},
                                              {"store": "a", "amount": 7}], lines
    # Run again: the folder is cleared first, so one file of each, not two.
    time.sleep(1.1)
    assert launch_export() == "SUCCESS"
    again, _ = files()
    [agg_again] = [n for n in again if n.endswith(".csv.gz")]
    assert agg_again != agg and len(again) == 4, again


def wait_run_any(t, run_id):
    def ended():
        code, body = t.curl("/v1/dag/status", json.dumps({"action": "get_by_status", "account": ACCOUNT,
                                                          "status": "RUNNING"}))
        assert code == 200, body
        return run_id not in [r["run_id"] for r in body["results"]]
    wait_for(ended, f"run {run_id}", timeout=60)
    for status in ("SUCCESS", "FAILED", "WARNING"):
        code, body = t.curl("/v1/dag/status", json.dumps({"action": "get_by_status", "account": ACCOUNT,
                                                          "status": status}))
        if run_id in [r["run_id"] for r in body["results"]]:
            return status
    raise AssertionError(f"run {run_id} ended in no known status")
