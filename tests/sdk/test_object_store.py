"""Objects in an S3-compatible store: code archives and datalake files go to
the bucket, not the data dir, and runs read and write them there. The S3
server is moto's (a real HTTP S3 API on loopback)."""
import re

import requests

from abeja.common.connection import Connection
from abeja.datalake import APIClient as DatalakeClient
from abeja.deployments import APIClient as DeploymentClient
from abeja.triggers import APIClient as TriggerClient

from conftest import Sluice, code_archive, wait_for

from conftest import S3_BUCKET as BUCKET

HANDLER = '''
def handler(request, context):
    return request["contents"][0].read().upper()
'''


def keys(url):
    xml = requests.get(f"{url}/{BUCKET}", params={"list-type": "2"}).text
    return re.findall(r"<Key>([^<]+)</Key>", xml)


def test_code_and_files_live_in_the_bucket(s3, tmp_path):
    env = {
        "SLUICE_OBJECT_STORE": f"s3://{BUCKET}/prod",
        "AWS_ENDPOINT_URL": s3,
        "AWS_ACCESS_KEY_ID": "sluice",
        "AWS_SECRET_ACCESS_KEY": "sluice-secret",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }
    s = Sluice(tmp_path, env=env)
    try:
        org, user, token = s.new_org()
        cred = {"user_id": user, "personal_access_token": token}
        Connection.BASE_URL = s.url
        deployments = DeploymentClient(credential=cred, max_retry_count=0)
        triggers = TriggerClient(credential=cred, max_retry_count=0)
        lake = DatalakeClient(credential=cred, max_retry_count=0)

        dep = deployments.create_deployment(org, "upper")["deployment_id"]
        ver = deployments.create_deployment_version(org, dep, "1", "main:handler", "python")
        requests.put(ver["upload_url"], data=code_archive({"main.py": HANDLER})).raise_for_status()
        inbox = lake.create_channel(org, "in", "", "datalake")["channel"]["channel_id"]
        outbox = lake.create_channel(org, "out", "", "datalake")["channel"]["channel_id"]
        tri = triggers.create_trigger(org, dep, ver["version_id"], "datalake", inbox,
                                      output_service_name="datalake", output_service_id=outbox)
        uploaded = [lake.post_channel_file_upload(inbox, f"file {i}".encode(), "text/plain")["file_id"]
                    for i in range(3)]

        def done():
            runs = triggers.get_trigger_runs(org, dep, tri["trigger_id"])["entries"]
            return runs if len(runs) == 3 and all(r["status"] == "SUCCEEDED" for r in runs) else None
        wait_for(done, "three runs to succeed", timeout=120, interval=0.3)

        outputs = lake.list_channel_files(outbox)["files"]
        assert sorted(requests.get(f["download_uri"]).content for f in outputs) == [
            b"FILE 0", b"FILE 1", b"FILE 2"]
        stored = keys(s3)
        code = [k for k in stored if k.startswith(f"prod/code/{ver['version_id']}/")]
        assert len(code) == 1 and code[0].endswith(".tar.gz"), stored
        for f in uploaded:
            assert f"prod/datalake/{inbox}/{f}" in stored
        for f in outputs:
            assert f"prod/datalake/{outbox}/{f['file_id']}" in stored
        local = [p for p in (s.data_dir / "objects").rglob("*") if p.is_file()]
        assert local == [], f"nothing in the local object folder: {local}"

        lake.delete_channel_file(inbox, uploaded[0])
        assert f"prod/datalake/{inbox}/{uploaded[0]}" not in keys(s3)
    finally:
        s.stop()
