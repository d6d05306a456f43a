"""Workflows, as the action API's documentation tells their story: three
jobs JA, JB and JC launch JT when all have succeeded; the unbalanced state
(JA(0), JB(0), JC(1)) after JC runs again; `reset_workflow_status` clears
it. On PostgreSQL metadata with a server and two workers, the three jobs
finishing at once fire JT exactly once."""
import json
import time
from concurrent.futures import ThreadPoolExecutor

from conftest import wait_for
from test_action_api import TTT, Tailer, launch_curl, wait_run, write_config
from test_action_runs import Cluster

JOBS = ["JA", "JB", "JC"]


def job_conf(name, sql_file="ok.sql"):
    return {**TTT, "configuration_id": f"000099_{name}", "task_dependencies": ["work"],
            "workflow": [{"id": "work", "task_type": "sql", "sql_file": sql_file,
                          "table_name": f"{name.lower()}_runs", "bq_dataset": "raw",
                          "write_disposition": "WRITE_APPEND"}]}


WORKFLOW = {
    "$schema": "http://jsonschema.tailer.ai/schema/workflow-veditor",
    "configuration_type": "workflow", "configuration_id": "000099-iowa-liquor-load-pda", "version": "2",
    "environment": "DEV", "account": "000099", "gcp_project_id": "acme-dlk",
    "authorized_job_ids": [f"gbq-to-gbq|000099_{j}_DEV" for j in JOBS],
    "target_dag": {"configuration_type": "table-to-table", "configuration_id": "000099_JT_DEV"},
}
RESET = '''{ "action": "reset_workflow_status",
"account": "000099",
"environment": "DEV",
"configuration_type": "workflow",
"configuration_id": "000099-iowa-liquor-load-pda"}'''


def run_job(t, name):
    code, body = launch_curl(t, f"000099_{name}_DEV")
    assert code == 200, body
    return wait_run(t, body["run_id"], f"000099_{name}_DEV")["results"][0]["status"]


def jt_runs(t):
    code, body = t.curl("/v1/dag/status", json.dumps({
        "action": "get_last_status", "account": "000099", "environment": "DEV",
        "configuration_type": "table-to-table", "configuration_id": "000099_JT_DEV", "limit": 100}))
    assert code == 200, body
    return body["results"]


def state(t):
    code, body = t.curl("/v1/workflow/status", json.dumps({
        "action": "get_workflow_status", "account": "000099", "environment": "DEV",
        "configuration_type": "workflow", "configuration_id": "000099-iowa-liquor-load-pda"}))
    assert code == 200, body
    return {k.split("_")[1]: v for k, v in body["data"]["authorized_job_ids"].items()}


def settle(t, fired):
    """Waits for JT's runs to be `fired` in number and ended, then makes
    sure no more come."""
    wait_for(lambda: len(jt_runs(t)) == fired and all(r["status"] != "RUNNING" for r in jt_runs(t)),
             f"{fired} runs of JT", timeout=60)
    time.sleep(1.0)
    runs = jt_runs(t)
    assert len(runs) == fired, runs
    assert all(r["status"] == "SUCCESS" for r in runs), runs


def test_the_documented_workflow_story_on_several_processes(tmp_path):
    c = Cluster(tmp_path)
    try:
        c.start_worker()
        c.start_worker()
        s = c.server
        t = Tailer(s, tmp_path, "embedded")
        sql = {"ok.sql": "SELECT 1 AS done", "bad.sql": "SELECT nope FROM nowhere"}
        for name in ["JA", "JB", "JT"]:
            s.cli("config", "deploy", str(write_config(tmp_path / name, job_conf(name), sql)), "--org", t.org)
        # JC is broken at first.
        s.cli("config", "deploy", str(write_config(tmp_path / "JC", job_conf("JC", "bad.sql"), sql)),
              "--org", t.org)
        (tmp_path / "wf.json").write_text(json.dumps(WORKFLOW))
        out = s.cli("config", "deploy", str(tmp_path / "wf.json"), "--org", t.org)
        assert out.startswith("Configuration successfully deployed with ID : 000099-iowa-liquor-load-pda"), out

        # JA and JB are OK, JC is not: JT is not triggered.
        assert run_job(t, "JA") == "SUCCESS" and run_job(t, "JB") == "SUCCESS"
        assert run_job(t, "JC") == "FAILED"
        settle(t, 0)
        assert state(t) == {"JA": 1, "JB": 1, "JC": 0}
        # JC fixed and relaunched: JT runs, once.
        s.cli("config", "deploy", str(write_config(tmp_path / "JC", job_conf("JC"), sql)), "--org", t.org)
        assert run_job(t, "JC") == "SUCCESS"
        settle(t, 1)
        assert state(t) == {"JA": 0, "JB": 0, "JC": 0}
        # The next morning JC runs again: the unbalanced state, visible over
        # the API and in `sluice config status`.
        assert run_job(t, "JC") == "SUCCESS"
        assert state(t) == {"JA": 0, "JB": 0, "JC": 1}
        shown = json.loads(s.cli("config", "status", "000099-iowa-liquor-load-pda", "--org", t.org, "--json"))
        assert shown["authorized_job_ids"] == {f"gbq-to-gbq|000099_{j}_DEV": v
                                              for j, v in (("JA", 0), ("JB", 0), ("JC", 1))}, shown
        # Reset, with the documentation's curl: as when it was just deployed.
        assert t.curl("/v1/workflow/status", RESET) == (200, {"code": 200, "data": {}, "message": "ok"})
        assert state(t) == {"JA": 0, "JB": 0, "JC": 0}
        # JT fires again only once all three succeed anew.
        assert run_job(t, "JA") == "SUCCESS" and run_job(t, "JB") == "SUCCESS"
        settle(t, 1)
        assert run_job(t, "JC") == "SUCCESS"
        settle(t, 2)

        # The three at once, on two workers, three times: JT once a round.
        for round_ in range(3):
            with ThreadPoolExecutor(3) as pool:
                assert list(pool.map(lambda j: run_job(t, j), JOBS)) == ["SUCCESS"] * 3
            settle(t, 3 + round_)

        # A deactivated target does not run (the workflow still fires);
        # a deactivated workflow does not count.
        def switch(conf_type, conf_id, activated):
            code, _ = t.curl("/v1/configuration/status", json.dumps({
                "action": "set_configuration_status", "activated": activated, "archived": False,
                "account": "000099", "environment": "DEV", "configuration_type": conf_type,
                "configuration_id": conf_id}))
            assert code == 200
        switch("table-to-table", "000099_JT_DEV", False)
        for j in JOBS:
            assert run_job(t, j) == "SUCCESS"
        settle(t, 5)
        assert state(t) == {"JA": 0, "JB": 0, "JC": 0}
        switch("table-to-table", "000099_JT_DEV", True)
        switch("workflow", "000099-iowa-liquor-load-pda", False)
        for j in JOBS:
            assert run_job(t, j) == "SUCCESS"
        settle(t, 5)
        assert state(t) == {"JA": 0, "JB": 0, "JC": 0}
    finally:
        c.stop()


def test_a_stopped_run_does_not_count_and_a_workflow_cannot_be_launched(sluice, tmp_path):
    t = Tailer(sluice, tmp_path, "embedded")
    sql = {"ok.sql": "SELECT 1 AS done", "bad.sql": "SELECT nope FROM nowhere"}
    stops = {**job_conf("JA"), "task_dependencies": ["halt >> work"],
             "workflow": [{"id": "halt", "task_type": "sql", "sql_file": "bad.sql", "criticality": "stop"},
                          {"id": "work", "task_type": "sql", "sql_file": "ok.sql", "table_name": "ja_runs",
                           "bq_dataset": "raw", "criticality": "warning"}]}
    for name, conf in (("JA", stops), ("JB", job_conf("JB")), ("JC", job_conf("JC")), ("JT", job_conf("JT"))):
        sluice.cli("config", "deploy", str(write_config(tmp_path / name, conf, sql)), "--org", t.org)
    (tmp_path / "wf.json").write_text(json.dumps(WORKFLOW))
    sluice.cli("config", "deploy", str(tmp_path / "wf.json"), "--org", t.org)
    assert [run_job(t, j) for j in JOBS] == ["SUCCESS"] * 3
    assert state(t) == {"JA": 0, "JB": 1, "JC": 1}
    settle(t, 0)
    code, body = t.curl("/v1/dag/launch", json.dumps({
        "action": "launch_job", "account": "000099", "environment": "DEV", "configuration_type": "workflow",
        "configuration_id": "000099-iowa-liquor-load-pda"}))
    assert code == 400 and "fires when" in body["error_description"], body
    # A version 1 workflow is refused, saying why.
    old = {**WORKFLOW, "version": "1", "target_dag": "000099_JT_DEV"}
    (tmp_path / "old.json").write_text(json.dumps(old))
    res = __import__("subprocess").run(
        [__import__("conftest").BIN, "config", "deploy", str(tmp_path / "old.json"), "--org", t.org,
         *sluice.store_args()], capture_output=True, text=True)
    assert res.returncode != 0 and "version" in res.stderr and "target_dag" in res.stderr, res.stderr


def test_a_workflow_awaits_a_templated_storage_to_storage_job(sluice, tmp_path):
    """`authorized_job_ids` names storage-to-storage jobs by their template,
    as Tailer's do: a file's arrival and copy counts for them."""
    from test_storage import CONF_ID, TEMPLATE, drop, sts
    t = Tailer(sluice, tmp_path, "embedded")
    for name, url in (("acme-in", "local"), ("acme-mirror", "local"), ("lake", f"file://{tmp_path / 'lake'}")):
        sluice.cli("bucket", "add", name, url, "--org", t.org)
    (tmp_path / "sts.json").write_text(json.dumps(sts(tmp_path)))
    sluice.cli("config", "deploy", str(tmp_path / "sts.json"), "--org", t.org)
    sql = {"ok.sql": "SELECT 1 AS done"}
    for name in ("JA", "JT"):
        sluice.cli("config", "deploy", str(write_config(tmp_path / name, job_conf(name), sql)), "--org", t.org)
    workflow = dict(WORKFLOW, authorized_job_ids=[
        f"storage-to-storage|000099|{CONF_ID}|DEV|{TEMPLATE}", "gbq-to-gbq|000099_JA_DEV"])
    (tmp_path / "wf.json").write_text(json.dumps(workflow))
    sluice.cli("config", "deploy", str(tmp_path / "wf.json"), "--org", t.org)
    assert run_job(t, "JA") == "SUCCESS"
    settle(t, 0)
    source = sluice.data_dir / "buckets" / t.org / "acme-in" / "stores"
    drop(source, "stores-20201209-171723.csv", b"a,b\n1,2\n")
    settle(t, 1)
