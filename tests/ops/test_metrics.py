"""`GET /metrics` (Prometheus' text format) and the request log: queue
depth follows runs submitted while nothing claims them; claims, outcomes
and durations move when a worker runs them; HTTP requests are counted by
route template and status class; every answer carries a request id (the
caller's when it is a plain token); a refused request is logged once with
its id and route template, never its path."""
import re

import pytest
import requests

from conftest import Sluice, deployment_of, fresh_postgres_database, wait_for

HANDLER = '''
def handler(request, context):
    print("ran", flush=True)
    return {"ok": True}
'''


def metrics(s):
    r = requests.get(s.url + "/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4"), r.headers
    out = {}
    for line in r.text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


def value(m, name, **labels):
    """A sample's value (0 when absent), its labels in any order."""
    for key, v in m.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if got == {k: str(v) for k, v in labels.items()}:
            return v
    return 0.0


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_metrics_move_with_the_work_and_requests_carry_an_id(backend, tmp_path):
    url = fresh_postgres_database() if backend == "postgres" else None
    # No worker first: submitted runs wait, and the queue depth says so.
    s = Sluice(tmp_path, url, worker=False, env={"SLUICE_LOG": "info"})
    try:
        session, dep_url, ver = deployment_of(s, HANDLER, "counted")
        before = metrics(s)
        assert value(before, "sluice_queue_depth", queue="default") == 0
        runs = [session.post(f"{dep_url}/runs", json={"version_id": ver}).json()["run_id"] for _ in range(3)]
        wait_for(lambda: value(metrics(s), "sluice_queue_depth", queue="default") == 3, "a queue of 3")
        m = metrics(s)
        waiting = sum(value(m, "sluice_open_work", kind="run", status=st) for st in ("SUBMITTED", "PENDING", "RUNNABLE"))
        assert waiting == 3, m
        assert value(m, "sluice_claims_total", kind="run") == 0
        # Requests by route template and status class.
        route = "/organizations/{org}/deployments/{dep}/runs"
        assert value(m, "sluice_http_requests_total", route=route, **{"class": "2xx"}) == 3
        r = session.get(f"{dep_url}/runs/run-0000000000000001", headers={"X-Request-Id": "trace-abc.123"})
        assert r.status_code == 404
        assert r.headers["X-Request-Id"] == "trace-abc.123"
        r = session.get(f"{dep_url}/runs", headers={"X-Request-Id": "not a token\u00e9"})
        assert re.fullmatch(r"req-[0-9a-f]{16}", r.headers["X-Request-Id"]), r.headers
        m = metrics(s)
        assert value(m, "sluice_http_requests_total", route=route + "/{run}", **{"class": "4xx"}) == 1
        assert value(m, "sluice_http_request_duration_seconds_count", route=route, **{"class": "2xx"}) >= 3
        assert value(m, "sluice_store_connections", state="idle") + value(
            m, "sluice_store_connections", state="in_use") >= 1
    finally:
        s.stop()
    log = (tmp_path / "serve.log").read_text()
    refused = [l for l in log.splitlines() if "request refused" in l]
    assert len(refused) == 1, refused
    assert "trace-abc.123" in refused[0] and "/runs/{run}" in refused[0], refused
    assert "run-0000000000000001" not in refused[0], "the path stays out of the log"
    # A worker now: the runs are claimed and succeed, and the counters say so.
    s = Sluice(tmp_path, url, env={"SLUICE_LOG": "info"})
    try:
        dep_url = s.url + "/organizations/" + dep_url.split("/organizations/", 1)[1]
        wait_for(lambda: all(session.get(f"{dep_url}/runs/{r}").json()["status"] == "SUCCEEDED" for r in runs),
                 "the runs to succeed", timeout=60)
        m = metrics(s)
        assert value(m, "sluice_claims_total", kind="run") == 3, m
        assert value(m, "sluice_finished_total", kind="run", outcome="succeeded") == 3
        assert value(m, "sluice_work_duration_seconds_count", kind="run", outcome="succeeded") == 3
        assert value(m, "sluice_queue_depth", queue="default") == 0
    finally:
        s.stop()
    log = (tmp_path / "serve.log").read_text()
    ended = [l for l in log.splitlines() if "run attempt ended" in l]
    assert len(ended) == 3 and all("outcome" in l and "duration_ms" in l for l in ended), ended


def test_json_logs_are_one_object_a_line_with_their_fields(tmp_path):
    s = Sluice(tmp_path, env={"SLUICE_LOG": "info", "SLUICE_LOG_FORMAT": "json"})
    try:
        org = s.new_org()[0]
        r = requests.get(f"{s.url}/organizations/{org}/deployments/1234567890123",
                         headers={"Authorization": f"Bearer {s.jwt(org)}", "X-Request-Id": "json-1"})
        assert r.status_code == 404
    finally:
        s.stop()
    import json
    lines = [json.loads(l) for l in (tmp_path / "serve.log").read_text().splitlines() if l.strip()]
    assert lines and all("timestamp" in l and "level" in l and "fields" in l for l in lines), lines[:3]
    refused = [l for l in lines if l["fields"].get("message") == "request refused"]
    assert len(refused) == 1, lines
    f = refused[0]["fields"]
    assert f["request_id"] == "json-1" and f["route"] == "/organizations/{org}/deployments/{dep}" \
        and f["status"] == 404, f
    assert any(l["fields"].get("message", "").startswith("sluice listening") for l in lines)


def test_what_a_run_makes_the_store_do_is_logged_under_its_run_id(tmp_path):
    """Every line logged while a worker runs an attempt — the store's own
    SQL statements included — carries the run's span (run id,
    organization, worker)."""
    import json
    s = Sluice(tmp_path, env={"SLUICE_LOG": "info,sqlx=debug", "SLUICE_LOG_FORMAT": "json"})
    try:
        session, dep_url, ver = deployment_of(s, "def handler(request, context):\n    return {}\n")
        run = session.post(f"{dep_url}/runs", json={"version_id": ver}).json()["run_id"]
        wait_for(lambda: session.get(f"{dep_url}/runs/{run}").json()["status"] == "SUCCEEDED", "the run")
    finally:
        s.stop()
    lines = [json.loads(l) for l in (tmp_path / "serve.log").read_text().splitlines() if l.strip()]
    mine = [l for l in lines if l.get("span", {}).get("run_id") == run]
    assert any(l["target"].startswith("sqlx") for l in mine), [l for l in lines if "span" in l][:5]
    span = mine[0]["span"]
    org = dep_url.split("/")[4]
    assert span["name"] == "run" and span["org"] == org and span["worker"], span
