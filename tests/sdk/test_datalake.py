"""Datalake channels and triggers (ABEJA Platform's API) as the official abeja-sdk sees
them: a file arriving in a channel starts exactly one run, whose output
lands in another channel; on SQLite and on PostgreSQL."""
import json
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from abeja.common.connection import Connection
from abeja.datalake import APIClient as DatalakeClient
from abeja.datalake import Client as DatalakeHighLevel
from abeja.deployments import APIClient as DeploymentClient
from abeja.exceptions import BadRequest, Forbidden, NotFound
from abeja.runs import APIClient as RunClient
from abeja.triggers import APIClient as TriggerClient

from conftest import Sluice, code_archive, fresh_postgres_database, wait_for

HANDLER = '''
import os

def handler(request, context):
    item = request["contents"][0]
    body = item.text()
    print("read", item["file_id"], len(body), "bytes")
    return {
        "file_id": item.file_id,
        "body": body,
        "content_type": item["content_type"],
        "filename": item["metadata"].get("x-abeja-meta-filename"),
        "input": request["input_data"]["$datalake:1"],
        "trigger_id": context.trigger_id,
        "env": os.environ.get("EXAMPLE_ENV"),
    }
'''


def pat(user, token):
    return {"user_id": user, "personal_access_token": token}


def clients(sluice, credential):
    Connection.BASE_URL = sluice.url
    return (
        DeploymentClient(credential=credential, max_retry_count=0),
        TriggerClient(credential=credential, max_retry_count=0),
        DatalakeClient(credential=credential, max_retry_count=0),
    )


def deploy(deployments, org, source):
    dep = deployments.create_deployment(org, "ingest", description="reads arrivals")
    ver = deployments.create_deployment_version(
        org, dep["deployment_id"], "0.0.3", "main:handler", "abeja-inc/all-cpu:19.10")
    res = requests.put(ver["upload_url"], data=code_archive({"main.py": source}))
    assert res.status_code == 200, res.text
    return dep["deployment_id"], ver["version_id"]


def channel(datalake, org, name):
    res = datalake.create_channel(org, name, f"{name} files", "datalake")
    assert res["organization_id"] == org
    return res["channel"]["channel_id"]


def all_pages(fetch):
    """Every entry of a paged list, and how many pages it took."""
    entries, token, pages = [], None, 0
    while True:
        res = fetch(token)
        pages += 1
        entries += res["entries"]
        token = res.get("next_page_token")
        if not token:
            return entries, pages


def trigger_runs(triggers, org, dep, tri, forward=None):
    return all_pages(lambda t: triggers.get_trigger_runs(
        org, dep, tri, next_page_token=t, scan_forward=forward))


def upload(datalake, channel_id, i):
    body = f"row {i}\n".encode() * (i + 1)
    res = datalake.post_channel_file_upload(
        channel_id, body, "text/plain", metadata={"x-abeja-meta-filename": f"part {i}.txt"})
    return res["file_id"], body


def test_each_arriving_file_starts_exactly_one_run(sluice):
    org, user, token = sluice.new_org()
    deployments, triggers, datalake = clients(sluice, pat(user, token))
    dep, ver = deploy(deployments, org, HANDLER)
    inbox = channel(datalake, org, "inbox")
    outbox = channel(datalake, org, "outbox")

    # A file that arrives before the trigger exists starts nothing.
    early, _ = upload(datalake, inbox, 999)

    tri = triggers.create_trigger(
        org, dep, ver, "datalake", inbox, output_service_name="datalake",
        output_service_id=outbox, retry_count=2, environment={"EXAMPLE_ENV": "example"})
    assert tri["trigger_id"].startswith("tri-") and len(tri["trigger_id"]) == 20
    assert tri["input_service_name"] == "datalake"
    assert tri["input_service_id"] == inbox and tri["output_service_id"] == outbox
    assert tri["model_version"] == "0.0.3" and tri["model_version_id"] == ver
    assert tri["retry_count"] == 2 and tri["user_env_vars"] == {"EXAMPLE_ENV": "example"}
    got = triggers.get_trigger(org, dep, tri["trigger_id"])
    assert got["trigger_id"] == tri["trigger_id"] and got["created_at"].endswith("Z")
    assert [t["trigger_id"] for t in triggers.get_triggers(org, dep)["entries"]] == [tri["trigger_id"]]

    # 100 files uploaded concurrently.
    with ThreadPoolExecutor(16) as pool:
        uploaded = dict(pool.map(lambda i: upload(datalake, inbox, i), range(100)))
    assert len(uploaded) == 100

    def all_done():
        runs, _ = trigger_runs(triggers, org, dep, tri["trigger_id"])
        done = [r for r in runs if r["status"] in ("SUCCEEDED", "FAILED")]
        return runs if len(done) == len(runs) >= 100 else None
    runs = wait_for(all_done, "100 trigger runs to finish", timeout=240, interval=0.5)

    assert len(runs) == 100, "exactly one run per file"
    assert {r["status"] for r in runs} == {"SUCCEEDED"}, [r.get("error") for r in runs]
    inputs = [r["input_data"]["$datalake:1"] for r in runs]
    assert sorted(inputs) == sorted(f"{inbox}/{f}" for f in uploaded)
    assert f"{inbox}/{early}" not in inputs
    assert all(r["trigger_id"] == tri["trigger_id"] for r in runs)

    # Trigger runs page both ways (10 per page here) and agree.
    newest_first, pages = trigger_runs(triggers, org, dep, tri["trigger_id"])
    oldest_first, _ = trigger_runs(triggers, org, dep, tri["trigger_id"], forward=True)
    assert pages == 10
    assert [r["run_id"] for r in newest_first] == [r["run_id"] for r in reversed(oldest_first)]

    # 100 outputs in the output channel, each from its own file.
    outputs, cursor, pages = [], None, 0
    while True:
        res = datalake.list_channel_files(outbox, items_per_page=30, next_page_token=cursor)
        outputs += res["files"]
        pages += 1
        cursor = res.get("next_page_token")
        if not cursor:
            break
    assert len(outputs) == 100 and pages == 4
    assert all(f["content_type"] == "application/json" for f in outputs)
    sources = sorted(f["metadata"]["x-abeja-meta-source"] for f in outputs)
    assert sources == sorted(inputs)
    one = outputs[17]
    result = requests.get(one["download_uri"]).json()
    file_id = result["file_id"]
    assert result["input"] == f"{inbox}/{file_id}"
    assert result["body"] == uploaded[file_id].decode()
    assert result["filename"] == f"part {int(result['body'].split()[1])}.txt"
    assert result["content_type"] == "text/plain"
    assert result["trigger_id"] == tri["trigger_id"] and result["env"] == "example"

    # The high-level client reads a file the same way.
    Connection.BASE_URL = sluice.url
    hl = DatalakeHighLevel(organization_id=org, credential=pat(user, token))
    f = hl.get_channel(inbox).get_file(file_id)
    assert f.get_content() == uploaded[file_id]
    assert f.metadata["filename"] == result["filename"]

    # The event ledger: every file, its run, when.
    events = requests.get(
        f"{sluice.url}/organizations/{org}/deployments/{dep}/triggers/{tri['trigger_id']}/events",
        auth=(f"user-{user}", token), params={"scan_forward": "True"}).json()
    ledger, _ = all_pages(lambda t: requests.get(
        f"{sluice.url}/organizations/{org}/deployments/{dep}/triggers/{tri['trigger_id']}/events",
        auth=(f"user-{user}", token),
        params=dict({"scan_forward": "True"}, **({"next_page_token": t} if t else {}))).json())
    assert len(ledger) == 100 and events["entries"][0]["state"] == "DISPATCHED"
    assert sorted(e["run_id"] for e in ledger) == sorted(r["run_id"] for r in runs)
    cli = json.loads(sluice.cli("trigger", "events", tri["trigger_id"], "--json"))
    assert [e["run_id"] for e in cli["entries"]] == [e["run_id"] for e in ledger]
    assert ledger[:10] == events["entries"]

    # Deleting the trigger stops new runs at once.
    assert triggers.delete_trigger(org, dep, tri["trigger_id"]) == {
        "message": f"{tri['trigger_id']} deleted"}
    upload(datalake, inbox, 1000)
    with pytest.raises(NotFound):
        triggers.get_trigger(org, dep, tri["trigger_id"])
    assert triggers.get_triggers(org, dep)["entries"] == []
    assert len(json.loads(sluice.cli("trigger", "events", tri["trigger_id"], "--json"))["entries"]) == 100


def test_channels_and_files_through_the_sdk(sluice):
    org, user, token = sluice.new_org()
    _, _, datalake = clients(sluice, pat(user, token))
    ch = channel(datalake, org, "raw")
    assert datalake.get_channel(org, ch)["channel"]["name"] == "raw"
    listed = datalake.list_channels(org)
    assert [c["channel_id"] for c in listed["channels"]] == [ch] and listed["has_next"] is False
    patched = datalake.patch_channel(org, ch, name="raw-2", description="renamed")
    assert patched["channel"]["name"] == "raw-2"

    meta = {"x-abeja-meta-filename": "résumé 1.csv", "x-abeja-meta-label": "a/b%c"}
    res = datalake.post_channel_file_upload(ch, b"a,b\n1,2\n", "text/csv", metadata=meta)
    fid = res["file_id"]
    assert len(fid) == 52 and fid[8] == "T" and fid[15] == "-"
    assert res["metadata"] == meta and res["content_type"] == "text/csv"
    info = datalake.get_channel_file_download(ch, fid)
    assert info["metadata"] == meta
    assert requests.get(info["download_uri"]).content == b"a,b\n1,2\n"
    newer = datalake.put_channel_file_metadata(ch, fid, metadata={"x-abeja-meta-label": "ok"})
    assert newer["metadata"] == {"x-abeja-meta-label": "ok"}
    assert datalake.delete_channel_file(ch, fid) == {"message": f"deleted file ({fid})"}
    with pytest.raises(NotFound):
        datalake.get_channel_file_download(ch, fid)

    # Archived channels take no uploads and leave the default list.
    datalake.archive_channel(org, ch)
    assert datalake.list_channels(org)["channels"] == []
    assert len(datalake.list_channels(org, filter_archived=False)["channels"]) == 1
    res = requests.post(f"{sluice.url}/channels/{ch}/upload", data=b"x",
                        headers={"Content-Type": "text/plain"}, auth=(f"user-{user}", token))
    assert res.status_code == 409 and "archived" in res.json()["error_description"]
    datalake.unarchive_channel(org, ch)
    assert datalake.list_channel_files(ch)["files"] == []

    # Another organization's channel is forbidden; an unknown one not found.
    other_org, other_user, other_token = sluice.new_org()
    _, _, stranger = clients(sluice, pat(other_user, other_token))
    with pytest.raises(Forbidden):
        stranger.post_channel_file_upload(ch, b"x", "text/plain")
    with pytest.raises(NotFound):
        datalake.post_channel_file_upload("1111111111111", b"x", "text/plain")
    with pytest.raises(NotFound):
        datalake.get_channel(org, "1111111111111")


def test_bad_triggers_and_uploads_are_refused_and_store_nothing(tmp_path):
    s = Sluice(tmp_path, env={"SLUICE_MAX_FILE_BYTES": "1000"})
    try:
        org, user, token = s.new_org()
        deployments, triggers, datalake = clients(s, pat(user, token))
        dep, ver = deploy(deployments, org, HANDLER)
        inbox = channel(datalake, org, "inbox")

        with pytest.raises(BadRequest) as e:
            triggers.create_trigger(org, dep, ver, "datalake", "1234567890123")
        assert "1234567890123" in str(e.value) and "input_service_id" in str(e.value)
        with pytest.raises(BadRequest) as e:
            triggers.create_trigger(org, dep, ver, "datalake", inbox,
                                    output_service_name="datalake", output_service_id="9999999999999")
        assert "9999999999999" in str(e.value)
        with pytest.raises(BadRequest) as e:
            triggers.create_trigger(org, dep, ver, "s3", inbox)
        assert "input_service_name" in str(e.value)
        with pytest.raises(BadRequest):
            triggers.create_trigger(org, dep, ver, "datalake", inbox, retry_count=10)
        res = requests.post(f"{s.url}/organizations/{org}/deployments/{dep}/triggers",
                            json={"version_id": ver, "input_service_name": "datalake",
                                  "input_service_id": inbox, "output_service_name": "datalake"},
                            auth=(f"user-{user}", token))
        assert res.status_code == 400 and "output_service_id" in res.json()["error_description"]
        assert triggers.get_triggers(org, dep)["entries"] == []

        tri = triggers.create_trigger(org, dep, ver, "datalake", inbox)
        res = requests.post(f"{s.url}/channels/{inbox}/upload", data=b"x" * 1001,
                            headers={"Content-Type": "text/plain"}, auth=(f"user-{user}", token))
        assert res.status_code == 413, res.text
        assert "1000" in res.json()["error_description"]
        res = requests.post(f"{s.url}/channels/{inbox}/upload", data=b"x",
                            params={"lifetime": "forever"}, auth=(f"user-{user}", token))
        assert res.status_code == 400 and "lifetime" in res.json()["error_description"]
        assert datalake.list_channel_files(inbox)["files"] == [], "nothing half-stored"
        assert triggers.get_trigger_runs(org, dep, tri["trigger_id"])["entries"] == []
        objects = list((s.data_dir / "objects").rglob("*"))
        assert not [p for p in objects if p.is_file() and "datalake" in str(p)]

        # A run whose input names a file that is not there, or another
        # organization's file, is refused when it is submitted.
        runs = RunClient(credential=pat(user, token), max_retry_count=0)
        missing = f"{inbox}/20180101T112233-e8286a2a-100a-4a40-a7de-5c9a5794b76c"
        with pytest.raises(NotFound) as e:
            runs.create_run(org, dep, ver, input_data={"$datalake:1": missing}, retry_count=0)
        assert "input_data.$datalake:1" in str(e.value) and "not found" in str(e.value)
        other_org, other_user, other_token = s.new_org()
        o_deployments, _, o_datalake = clients(s, pat(other_user, other_token))
        o_dep, o_ver = deploy(o_deployments, other_org, HANDLER)
        theirs = o_datalake.post_channel_file_upload(channel(o_datalake, other_org, "private"),
                                                     b"secret", "text/plain")
        o_runs = RunClient(credential=pat(other_user, other_token), max_retry_count=0)
        with pytest.raises(NotFound):
            runs.create_run(org, dep, ver, input_data={"$datalake:1": f"{theirs['channel_id']}/{theirs['file_id']}"})
        assert runs.get_runs(org, dep)["entries"] == []
        assert o_runs.get_runs(other_org, o_dep)["entries"] == []
    finally:
        s.stop()


def test_a_run_whose_file_went_away_fails_without_retrying(tmp_path):
    # No worker at first: the file is deleted while the run waits.
    s = Sluice(tmp_path, worker=False)
    org, user, token = s.new_org()
    deployments, _, datalake = clients(s, pat(user, token))
    dep, ver = deploy(deployments, org, HANDLER)
    inbox = channel(datalake, org, "inbox")
    fid, _ = upload(datalake, inbox, 1)
    runs = RunClient(credential=pat(user, token), max_retry_count=0)
    run = runs.create_run(org, dep, ver, input_data={"$datalake:1": f"{inbox}/{fid}"}, retry_count=5)
    assert runs.get_run(org, dep, run["run_id"])["status"] in ("SUBMITTED", "PENDING", "RUNNABLE")
    datalake.delete_channel_file(inbox, fid)
    s.stop()
    s = Sluice(tmp_path)
    Connection.BASE_URL = s.url
    try:
        done = wait_for(lambda: (r := runs.get_run(org, dep, run["run_id"]))["status"] in
                        ("FAILED", "SUCCEEDED") and r, "the run to end")
        assert done["status"] == "FAILED"
        assert "input_data.$datalake:1" in done["error"] and "not found" in done["error"], done
        attempts = requests.get(f"{s.url}/organizations/{org}/deployments/{dep}/runs/{run['run_id']}/attempts",
                                auth=(f"user-{user}", token)).json()
        assert len(attempts["entries"]) == 1, attempts
    finally:
        s.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_files_acknowledged_before_a_crash_start_their_runs_after_restart(backend, tmp_path):
    url = fresh_postgres_database() if backend == "postgres" else None
    env = {"SLUICE_PAGE_SIZE": "1000"}
    s = Sluice(tmp_path, url, env=env)
    org, user, token = s.new_org()
    deployments, triggers, datalake = clients(s, pat(user, token))
    dep, ver = deploy(deployments, org, HANDLER)
    inbox = channel(datalake, org, "inbox")
    tri = triggers.create_trigger(org, dep, ver, "datalake", inbox)["trigger_id"]

    with ThreadPoolExecutor(8) as pool:
        acknowledged = set(f for f, _ in pool.map(lambda i: upload(datalake, inbox, i), range(60)))
    s.proc.send_signal(signal.SIGKILL)
    s.proc.wait()
    s.log.close()

    # The ledger as the crash left it, read by the admin CLI from the store.
    ledger = json.loads(s.cli("trigger", "events", tri, "--json"))["entries"]
    assert sorted(e["file_id"] for e in ledger) == sorted(acknowledged)
    pending_at_crash = sum(e["state"] == "PENDING" for e in ledger)
    # The crash must come while events wait, or it proves nothing.
    assert pending_at_crash > 0, "every event was dispatched before the crash"

    s = Sluice(tmp_path, url, env=env)
    try:
        Connection.BASE_URL = s.url

        def settled():
            entries = json.loads(s.cli("trigger", "events", tri, "--json"))["entries"]
            return entries if all(e["state"] == "DISPATCHED" for e in entries) else None
        wait_for(settled, "every event dispatched after restart", timeout=60, interval=0.3)
        runs = triggers.get_trigger_runs(org, dep, tri)["entries"]
        files = [r["input_data"]["$datalake:1"].split("/")[1] for r in runs]
        assert sorted(files) == sorted(acknowledged), "every acknowledged file has exactly one run"
        wait_for(lambda: all(r["status"] in ("SUCCEEDED", "FAILED") for r in
                             triggers.get_trigger_runs(org, dep, tri)["entries"]),
                 "runs to finish", timeout=180, interval=0.5)
        runs = triggers.get_trigger_runs(org, dep, tri)["entries"]
        assert len(runs) == 60 and {r["status"] for r in runs} == {"SUCCEEDED"}
    finally:
        s.stop()
