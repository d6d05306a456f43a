"""Fixtures that run a real `sluice serve` (SQLite or PostgreSQL metadata)
and point the official abeja-sdk at it.

SLUICE_BIN names the binary (default: target/debug/sluice).
SLUICE_TEST_POSTGRES_URL names the PostgreSQL server for the `postgres`
backend (default postgres://postgres@127.0.0.1:5432/postgres); a test on
that backend fails when the server does not answer.
"""
import contextlib
import json
import os
import socket
import subprocess
import tarfile
import io
import time
import uuid
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
# Absolute: tests run commands from folders of their own.
BIN = os.path.abspath(os.environ.get("SLUICE_BIN") or str(
    Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "sluice"
))
PG_ADMIN = os.environ.get(
    "SLUICE_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"
)


def psql(url, sql):
    """Runs SQL with psql; answers its unaligned output."""
    out = subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


@contextlib.contextmanager
def postgres_databases(prefix, count=2):
    """`count` fresh databases on the test server, dropped afterwards."""
    tag = uuid.uuid4().hex[:10]
    names = [f"{prefix}_{i}_{tag}" for i in range(count)]
    for n in names:
        psql(PG_ADMIN, f"CREATE DATABASE {n}")
    try:
        yield [PG_ADMIN.rsplit("/", 1)[0] + "/" + n for n in names]
    finally:
        for n in names:
            psql(PG_ADMIN, f"DROP DATABASE IF EXISTS {n} WITH (FORCE)")


def store_sql(data_dir, database_url, sql):
    """Runs SQL on the metadata store of a sluice whose data dir is
    `data_dir` (SQLite) or whose store is `database_url` (PostgreSQL);
    answers the rows as psql's unaligned output."""
    if database_url:
        return psql(database_url, sql)
    import sqlite3
    db = sqlite3.connect(Path(data_dir) / "sluice.db", timeout=60)
    try:
        rows = db.execute(sql).fetchall()
        db.commit()
        return "\n".join("|".join(str(v) for v in r) for r in rows)
    finally:
        db.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Databases made by fresh_postgres_database, dropped when the session ends.
_MADE = []


def fresh_postgres_database():
    name = "sluice_sdk_" + uuid.uuid4().hex[:12]
    subprocess.run(
        ["psql", PG_ADMIN, "-v", "ON_ERROR_STOP=1", "-qc", f"CREATE DATABASE {name}"],
        check=True,
        capture_output=True,
    )
    _MADE.append(name)
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


def drop_postgres_database(url):
    """Drops a database fresh_postgres_database made (outside pytest too)."""
    name = url.rsplit("/", 1)[1]
    subprocess.run(["psql", PG_ADMIN, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
                   capture_output=True)
    if name in _MADE:
        _MADE.remove(name)


# Every log a sluice process of this run wrote, and every secret the tests
# handed to sluice: at the run's end no log may hold one.
LOGS = []
SECRETS = {
    # The test HTTP API's credentials (tests/fake_api.py) and the password
    # the secrets test puts in connection URLs.
    "s3cret-token", "issued-token", "csecret", "pw-never-logged",
}


@pytest.fixture(scope="session", autouse=True)
def _no_secret_in_any_log():
    yield
    found = []
    for path in LOGS:
        try:
            text = Path(path).read_text(errors="replace")
        except FileNotFoundError:
            continue
        found += [(str(path), s) for s in SECRETS if s and s in text]
    assert not found, f"secrets in sluice's logs: {found[:10]}"


@pytest.fixture(scope="session", autouse=True)
def _drop_made_databases():
    yield
    for name in _MADE:
        subprocess.run(["psql", PG_ADMIN, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
                       capture_output=True)


class Sluice:
    """A running sluice: its URL, data dir, store URL and admin commands."""

    def __init__(self, tmp: Path, database_url=None, env=None, worker=True):
        self.data_dir = tmp / "data"
        self.database_url = database_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "SLUICE_LOG": "warn", **(env or {})}
        args = [BIN, "serve", "--listen", f"127.0.0.1:{self.port}"] + self.store_args()
        if not worker:
            args.append("--no-worker")
        self.log = open(tmp / "serve.log", "w")
        LOGS.append(tmp / "serve.log")
        self.proc = subprocess.Popen(args, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("sluice serve did not become healthy: " + (tmp / "serve.log").read_text())

    def store_args(self):
        args = ["--data-dir", str(self.data_dir)]
        if self.database_url:
            args += ["--database-url", self.database_url]
        return args

    def store_sql(self, sql):
        """Runs SQL on the server's metadata store (SQLite or PostgreSQL):
        for tests that must put the store in a state no command makes."""
        return store_sql(self.data_dir, self.database_url, sql)

    def cli(self, *args):
        out = subprocess.run([BIN, *args, *self.store_args()], env=self.env, check=True,
                             capture_output=True, text=True)
        return out.stdout

    def cli_json(self, *args):
        return json.loads(self.cli(*args, "--json"))

    def new_org(self):
        """An organization with one user: (org_id, user_id, token)."""
        org = self.cli_json("org", "create", "acme-" + uuid.uuid4().hex[:6])["organization_id"]
        user = self.cli_json("user", "create", "--org", org, f"dev-{uuid.uuid4().hex[:6]}@example.com")
        SECRETS.add(user["personal_access_token"])
        return org, user["user_id"], user["personal_access_token"]

    def jwt(self, org):
        out = self.cli("auth", "get-token", "--org", org)
        # The documented pipeline: awk '/User token :/ {print $4}'
        line = next(l for l in out.splitlines() if "User token :" in l)
        SECRETS.add(line.split()[3])
        return line.split()[3]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(params=["sqlite", "postgres"])
def sluice(request, tmp_path):
    url = fresh_postgres_database() if request.param == "postgres" else None
    s = Sluice(tmp_path, url, env={
        "SLUICE_PAGE_SIZE": "10",
        "SLUICE_LOG_PAGE_SIZE": "100",
        "SLUICE_RETRY_BASE_MS": "100",
        "SLUICE_HEARTBEAT_MS": "300",
    })
    yield s
    s.stop()
    if url:
        # Dropped at once: its pages leave the buffer cache unwritten, where
        # a drop at the session's end makes PostgreSQL write them all first.
        drop_postgres_database(url)


S3_BUCKET = "sluice-objects"


@pytest.fixture
def s3(tmp_path):
    """moto's S3 server (a real HTTP S3 API on loopback) with one bucket,
    S3_BUCKET: answers its URL."""
    import sys
    port = free_port()
    log = open(tmp_path / "s3.log", "w")
    server = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            requests.get(url, timeout=1)
            break
        except requests.ConnectionError:
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError("the S3 server did not start: " + (tmp_path / "s3.log").read_text())
            time.sleep(0.1)
    requests.put(f"{url}/{S3_BUCKET}").raise_for_status()
    yield url
    proc.terminate()
    proc.wait()
    log.close()


def code_archive(files: dict) -> bytes:
    """A tar.gz of {path: source}, as shutil.make_archive would make it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, body in files.items():
            data = body.encode()
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def wait_for(fn, what, timeout=60, interval=0.1):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@pytest.fixture
def api():
    """A real HTTP API on loopback for API-source tests (fake_api.py)."""
    from fake_api import FakeApi
    a = FakeApi()
    yield a
    a.stop()


def deployment_of(s, code, name="d"):
    """A new organization's deployment whose version runs `code`
    (main.py's `handler`): (a session as its user, the deployment's URL,
    the version's id)."""
    org, user, token = s.new_org()
    session = requests.Session()
    session.auth = (f"user-{user}", token)
    base = f"{s.url}/organizations/{org}/deployments"
    dep = session.post(base, json={"name": name}).json()["deployment_id"]
    ver = session.post(f"{base}/{dep}/versions",
                       json={"version": "1", "handler": "main:handler", "image": "python"}).json()
    assert requests.put(ver["upload_url"], data=code_archive({"main.py": code})).status_code == 200
    return session, f"{base}/{dep}", ver["version_id"]
