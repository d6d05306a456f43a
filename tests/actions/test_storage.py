"""Storage-to-storage, from Tailer's version 3 file: files arriving in a
watched folder are copied to every destination (each copy read back and
checked), archived under their date, and removed from the source — each
exactly once; a file no template matches ends NO_MATCH and stays. The
documentation's storage-to-storage get_last_status curls run verbatim."""
import hashlib
import json
import os

from conftest import wait_for
from test_action_api import ACCOUNT, Tailer

CONF_ID = "000099-jarvis-demo-iowa-liquor-storage-to-storage"
TEMPLATE = "stores-{{FD_DATE}}-{{FD_TIME}}.csv"


def sts(tmp_path):
    return {
        "$schema": "http://jsonschema.tailer.ai/schema/storage-to-storage-veditor",
        "configuration_type": "storage-to-storage", "configuration_id": CONF_ID,
        "environment": "DEV", "account": ACCOUNT, "version": "3",
        "filename_templates": [{"filename_template": TEMPLATE, "file_description": "Stores"}],
        "source": {"type": "gcs", "gcp_project_id": "acme-exc", "gcs_source_bucket": "acme-in",
                   "gcs_source_prefix": "stores", "archive_prefix": "archive",
                   "gcp_credentials_secret": {"cipher_aes": "x", "tag": "x", "ciphertext": "x",
                                              "enc_session_key": "x"}},
        "destinations": [
            {"type": "gcs", "gcs_destination_bucket": "acme-mirror", "gcs_destination_prefix": "stores",
             "gcp_credentials_secret": {"cipher_aes": "x", "tag": "x", "ciphertext": "x", "enc_session_key": "x"}},
            {"type": "local", "bucket": "lake", "prefix": "copies"},
        ],
    }


def drop(folder, name, data):
    """Puts a file in the watched folder the way a sender should: whole,
    with a rename."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{name}.part"
    tmp.write_bytes(data)
    os.rename(tmp, folder / name)


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def last_status(t, extra=""):
    return t.curl("/v1/dag/status", '''{ "action": "get_last_status",
"account": "%s",
"environment": "DEV",
"configuration_type": "storage-to-storage",
"configuration_id": "%s"%s}''' % (ACCOUNT, CONF_ID, extra))


def test_files_are_copied_checked_archived_and_removed_once(sluice, tmp_path):
    t = Tailer(sluice, tmp_path, "embedded")
    lake = tmp_path / "lake"
    for name, url in (("acme-in", "local"), ("acme-mirror", "local"), ("lake", f"file://{lake}")):
        sluice.cli("bucket", "add", name, url, "--org", t.org)
    (tmp_path / "sts.json").write_text(json.dumps(sts(tmp_path)))
    out = sluice.cli("config", "deploy", str(tmp_path / "sts.json"), "--org", t.org)
    assert out.startswith(f"Configuration successfully deployed with ID : {CONF_ID}"), out

    buckets = sluice.data_dir / "buckets" / t.org
    source = buckets / "acme-in" / "stores"
    sent = {}
    for i in range(20):
        name = f"stores-202012{i % 28 + 1:02}-17{i:02}00.csv"
        data = os.urandom(1000 + i) + f"\nfile {i}\n".encode()
        sent[name] = hashlib.sha256(data).hexdigest()
        drop(source, name, data)
    drop(source, "readme.txt", b"not a stores file")

    def ended():
        code, body = last_status(t, ',\n"limit": 100')
        assert code == 200, body
        runs = body["results"]
        return runs if len(runs) == 21 and all(r["status"] != "RUNNING" for r in runs) else None
    runs = wait_for(ended, "21 runs", timeout=90)
    statuses = sorted(r["status"] for r in runs)
    assert statuses == ["NO_MATCH"] + ["SUCCESS"] * 20, statuses
    job = f"storage-to-storage|{ACCOUNT}|{CONF_ID}|DEV|{TEMPLATE}"
    assert sorted(r["job_id"] for r in runs if r["status"] == "SUCCESS") == [job] * 20
    assert all(r["configuration_type"] == "storage-to-storage" for r in runs)

    # Every file once in each destination, the same bytes; archived under
    # its date; gone from the source — but the stray one, which stays.
    for name, digest in sent.items():
        assert sha(buckets / "acme-mirror" / "stores" / name) == digest, name
        assert sha(lake / "copies" / name) == digest, name
        day = name.split("-")[1]
        assert sha(buckets / "acme-in" / "archive" / day / name) == digest, name
    assert sorted(p.name for p in source.iterdir()) == ["readme.txt"]
    assert len(list((buckets / "acme-mirror" / "stores").iterdir())) == 20

    # Nothing more happens: the stray file is not taken again.
    import time
    time.sleep(1.5)
    code, body = last_status(t, ',\n"limit": 100')
    assert len(body["results"]) == 21, body

    # The documentation's two storage-to-storage requests, verbatim.
    code, body = last_status(t)
    assert code == 200 and len(body["results"]) == 3, body
    assert set(body["results"][0]) == {"account", "configuration_id", "configuration_type", "duration",
                                       "environment", "job_id", "last_update_date", "run_id",
                                       "start_execution_date", "status"}
    code, body = last_status(t, ',\n"execution_date": "2020-12-09",\n"status": "SUCCESS",\n"limit": 2')
    assert code == 200 and len(body["results"]) == 1, body   # one file is dated 2020-12-09
    assert body["results"][0]["status"] == "SUCCESS"

    # The same name again, new bytes: a new file, copied again.
    drop(source, "stores-20201201-170000.csv", b"second delivery")
    wait_for(lambda: len(last_status(t, ',\n"limit": 100')[1]["results"]) == 22
             and not (source / "stores-20201201-170000.csv").exists(), "the second delivery", timeout=60)
    assert (buckets / "acme-mirror" / "stores" / "stores-20201201-170000.csv").read_bytes() == b"second delivery"


def test_a_worker_killed_between_copy_and_removal_loses_and_duplicates_nothing(tmp_path):
    import signal
    import time
    from test_action_runs import Cluster
    c = Cluster(tmp_path)
    try:
        doomed = c.start_worker()
        s = c.server
        t = Tailer(s, tmp_path, "embedded")
        lake = tmp_path / "lake"
        for name, url in (("acme-in", "local"), ("acme-mirror", "local"), ("lake", f"file://{lake}")):
            s.cli("bucket", "add", name, url, "--org", t.org)
        (tmp_path / "sts.json").write_text(json.dumps(sts(tmp_path)))
        s.cli("config", "deploy", str(tmp_path / "sts.json"), "--org", t.org)
        buckets = s.data_dir / "buckets" / t.org
        source = buckets / "acme-in" / "stores"
        name = "stores-20201209-171723.csv"
        data = os.urandom(64 << 20)
        digest = hashlib.sha256(data).hexdigest()
        drop(source, name, data)
        copy = buckets / "acme-mirror" / "stores" / name
        # The first copy is written and the source is still there: the
        # worker is between copy and removal. Kill it then.
        wait_for(lambda: copy.exists() and (source / name).exists(), "the first copy", timeout=60,
                 interval=0.005)
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait()
        assert (source / name).exists(), "the kill came too late to prove anything"
        c.start_worker()
        wait_for(lambda: not (source / name).exists(), "the source to be removed", timeout=60)
        time.sleep(1.0)
        code, body = last_status(t, ',\n"limit": 10')
        assert code == 200 and [r["status"] for r in body["results"]] == ["SUCCESS"], body
        status = json.loads(s.cli("config", "status", CONF_ID, "--org", t.org, "--json"))
        assert status["runs"][0]["attempt"] == 2, status["runs"][0]
        assert sha(copy) == digest and sha(lake / "copies" / name) == digest
        assert sha(buckets / "acme-in" / "archive" / "20201209" / name) == digest
        assert len(list(copy.parent.iterdir())) == 1 and len(list((lake / "copies").iterdir())) == 1
    finally:
        c.stop()


def test_files_move_between_a_folder_and_a_real_s3_api(sluice, tmp_path, s3):
    """The S3 destination's endpoint and credentials come from the bucket's
    own URL (sealed), not from the server's environment."""
    import re as regex
    import requests
    from conftest import S3_BUCKET
    t = Tailer(sluice, tmp_path, "embedded")
    sluice.cli("bucket", "add", "acme-in", "local", "--org", t.org)
    sluice.cli("bucket", "add", "acme-mirror",
               f"s3://sluice:sluice-secret@{S3_BUCKET}/mirror?endpoint={s3}&region=us-east-1", "--org", t.org)
    shown = json.loads(sluice.cli("bucket", "list", "--org", t.org, "--json"))
    assert all("sluice-secret" not in b["url"] for b in shown), shown
    sluice.cli("bucket", "add", "lake", f"file://{tmp_path / 'lake'}", "--org", t.org)
    (tmp_path / "sts.json").write_text(json.dumps(sts(tmp_path)))
    sluice.cli("config", "deploy", str(tmp_path / "sts.json"), "--org", t.org)
    source = sluice.data_dir / "buckets" / t.org / "acme-in" / "stores"
    sent = {}
    for i in range(5):
        name = f"stores-20201209-17000{i}.csv"
        data = os.urandom(5000) + bytes([i])
        sent[name] = data
        drop(source, name, data)
    wait_for(lambda: not any(source.iterdir()), "the source to empty", timeout=60)
    keys = regex.findall(r"<Key>([^<]+)</Key>",
                         requests.get(f"{s3}/{S3_BUCKET}", params={"list-type": "2"}).text)
    assert sorted(keys) == sorted(f"mirror/stores/{n}" for n in sent), keys
    import boto3  # moto's own dependency
    client = boto3.client("s3", endpoint_url=s3, aws_access_key_id="sluice",
                          aws_secret_access_key="sluice-secret", region_name="us-east-1")
    for name, data in sent.items():
        got = client.get_object(Bucket=S3_BUCKET, Key=f"mirror/stores/{name}")["Body"].read()
        assert got == data, name


def test_names_of_buckets_and_warehouses_cannot_leave_their_folder(sluice, tmp_path):
    import subprocess
    from conftest import BIN
    t = Tailer(sluice, tmp_path, "embedded")
    for kind, name in (("bucket", "../../escape"), ("bucket", ".hidden"), ("warehouse", "a/b")):
        url = "local" if kind == "bucket" else "embedded"
        res = subprocess.run([BIN, kind, "add", name, url, "--org", t.org, *sluice.store_args()],
                             capture_output=True, text=True)
        assert res.returncode != 0 and f"{kind} name `{name}`" in res.stderr, res.stderr
    assert not (sluice.data_dir / "escape").exists()
