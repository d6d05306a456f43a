"""The README, run literally: `sluice serve` with no flags from an empty
folder (so its data dir is the relative default `./sluice-data` and it
listens on the documented 127.0.0.1:8080), the admin commands as written,
then the README's own Python snippets, read out of README.md, run against
it. A run started by the snippet must end SUCCEEDED, and a file uploaded by
the datalake snippet must start one run that succeeds.

Port 8080 must be free: the test fails loudly when it is not."""
import json
import os
import re
import socket
import subprocess
import sys

import requests

from conftest import BIN, ROOT, code_archive, wait_for, LOGS, SECRETS

URL = "http://127.0.0.1:8080"


def snippets(language):
    """The README's code blocks in `language`, in order."""
    text = (ROOT / "README.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def readme_serve_args():
    """The README's command to run sluice, after `cargo run … --`."""
    line = next(l for s in snippets("sh") for l in s.splitlines() if "cargo run" in l and " serve" in l)
    return line.split(" -- ", 1)[1].split()


def sluice(cwd, *args):
    out = subprocess.run([BIN, *args], cwd=cwd, capture_output=True, text=True)
    assert out.returncode == 0, f"sluice {' '.join(args)}: {out.stderr}"
    return out.stdout


def test_the_readme_path_works_from_an_empty_folder(tmp_path):
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", 8080)) != 0, "port 8080 is taken: the README's server needs it"
    folder = tmp_path / "empty"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    log = open(tmp_path / "serve.log", "w")
    LOGS.append(tmp_path / "serve.log")
    proc = subprocess.Popen([BIN, *readme_serve_args()], cwd=folder, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _healthy(), "sluice serve on 127.0.0.1:8080", timeout=30)
        assert (folder / "sluice-data" / "sluice.db").exists(), "the default data dir is ./sluice-data"
        org = json.loads(sluice(folder, "org", "create", "acme", "--json"))["organization_id"]
        user = json.loads(sluice(folder, "user", "create", "--org", org, "dev@acme.io", "--json"))
        SECRETS.add(user["personal_access_token"])

        # The README's Run API snippet, as written, with its names filled in.
        (folder / "code.tar.gz").write_bytes(code_archive({
            "main.py": "import os\n"
                       "def handler(request, context):\n"
                       "    print('example env', os.environ.get('EXAMPLE_ENV'))\n"
                       "    return {'ok': True}\n",
        }))
        run_api = next(s for s in snippets("python") if "create_run" in s)
        lake = next(s for s in snippets("python") if "post_channel_file_upload" in s)
        (folder / "events.csv").write_text("id,at\n1,2026-01-01\n")
        # A fresh interpreter, as a reader's would be: the snippets as
        # written, their names filled in before, what they made printed after.
        script = (
            f"USER_ID = {user['user_id']!r}\nTOKEN = {user['personal_access_token']!r}\nORG = {org!r}\n"
            + run_api
            + "\nDEP, VER = dep['deployment_id'], ver['version_id']\n"
            + lake
            + "\nimport json\nprint(json.dumps({'dep': DEP, 'run': run['run_id']}))\n"
        )
        (folder / "readme_snippets.py").write_text(script)
        out = subprocess.run([sys.executable, "readme_snippets.py"], cwd=folder, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        made = json.loads(out.stdout.strip().splitlines()[-1])
        runs_url = f"{URL}/organizations/{org}/deployments/{made['dep']}/runs"
        auth = ("user-" + user["user_id"], user["personal_access_token"])

        def all_ended():
            entries = requests.get(runs_url, auth=auth, timeout=10).json()["entries"]
            ended = [r for r in entries if r["status"] in ("SUCCEEDED", "FAILED")]
            return entries if len(entries) == 2 and len(ended) == 2 else None

        # The snippet's run, and the one its uploaded file started.
        entries = wait_for(all_ended, "both runs to end", timeout=120)
        assert made["run"] in [r["run_id"] for r in entries]
        assert [r["status"] for r in entries] == ["SUCCEEDED", "SUCCEEDED"], (
            entries, (tmp_path / "serve.log").read_text()[-3000:])
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _healthy():
    try:
        return requests.get(URL + "/healthz", timeout=1).status_code == 200
    except requests.ConnectionError:
        return False
