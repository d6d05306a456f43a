"""The row path killed mid-flight: `sluice import` from MariaDB into a SQLite
warehouse file (as jobs load into the embedded warehouse), SIGKILLed while
its SELECT streams rows out of MariaDB (seen in MariaDB's process list), with
new rows arriving between the kills. Each kill leaves the warehouse's ledger
as it was (nothing of that window committed); in the end the warehouse holds
every source row exactly once."""
import signal
import sqlite3
import subprocess
import time
import uuid

import pytest

from conftest import BIN

MYSQL = ["mariadb", "-uroot", "-h127.0.0.1", "-P3306", "-N", "-B"]


def mysql(sql, db=None):
    out = subprocess.run(MYSQL + ([db] if db else []) + ["-e", sql], check=True, capture_output=True,
                         text=True)
    return out.stdout.strip()


@pytest.fixture
def source():
    name = "sluice_rowcrash_" + uuid.uuid4().hex[:10]
    mysql(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        mysql(f"DROP DATABASE IF EXISTS {name}")


def add_rows(db, first, last):
    mysql(f"INSERT INTO events SELECT seq, TIMESTAMP('2026-01-01') + INTERVAL seq SECOND, "
          f"REPEAT('payload ', 30) FROM seq_{first}_to_{last}", db)


def selecting(db):
    """Whether the import's SELECT is streaming out of the source now."""
    return mysql("SELECT count(*) FROM information_schema.processlist "
                 f"WHERE db = '{db}' AND info LIKE 'SELECT %events%' AND command IN ('Query', 'Execute')") != "0"


def loads(warehouse):
    if not warehouse.exists():
        return 0
    db = sqlite3.connect(warehouse, timeout=30)
    try:
        return db.execute("SELECT count(*) FROM sluice_load_ledger").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


def test_row_path_killed_while_streaming_then_every_row_exactly_once(source, tmp_path):
    mysql("CREATE TABLE events (id BIGINT PRIMARY KEY, at DATETIME(6) NOT NULL, body TEXT)", source)
    add_rows(source, 1, 100_000)
    warehouse = tmp_path / "warehouse.db"
    args = [BIN, "import", "--from", f"mariadb://root@127.0.0.1:3306/{source}", "--table", "events",
            "--to", f"sqlite://{warehouse}", "--target", "events", "--change-column", "at"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    killed, finished, last = 0, 0, 100_000
    for _ in range(12):
        add_rows(source, last + 1, last + 60_000)
        last += 60_000
        before = loads(warehouse)
        p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while p.poll() is None and time.time() < deadline and not selecting(source):
            time.sleep(0.005)
        if p.poll() is None:
            # Stopped, the importer can neither read its last rows nor
            # commit: a SELECT still streaming then proves the kill lands
            # mid-flight.
            p.send_signal(signal.SIGSTOP)
        if p.poll() is None and selecting(source):
            p.send_signal(signal.SIGKILL)
            p.wait()
            killed += 1
            assert loads(warehouse) == before, "a window killed mid-stream committed"
        else:
            p.send_signal(signal.SIGCONT)
            p.wait()
            assert p.returncode == 0, p.stderr.read().decode()
            finished += 1
    assert killed >= 4, f"only {killed} of 12 runs were killed while their SELECT streamed"
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    want = mysql("SELECT count(*), count(DISTINCT id), sum(id) FROM events", source).split()
    got = sqlite3.connect(warehouse).execute(
        "SELECT count(*), count(DISTINCT id), sum(id) FROM events").fetchone()
    assert [str(v) for v in got] == want == [str(last), str(last), str(last * (last + 1) // 2)]
