"""`sluice import` killed with SIGKILL while it streams, ten times, with
new source rows arriving between the kills: the destination ends with every
source row exactly once, and a killed destructive load leaves the live table
as it was."""
import json
import random
import signal
import subprocess
import time

import pytest

from conftest import BIN, postgres_databases, psql


@pytest.fixture
def dbs():
    with postgres_databases("sluice_crash") as urls:
        yield urls


def add_rows(src, first, last):
    psql(src, f"""INSERT INTO events SELECT g, timestamptz '2026-01-01' + g * interval '1 ms',
        repeat('payload ', 20) || g, jsonb_build_object('g', g), (g % 1000) / 10.0
        FROM generate_series({first}, {last}) g""")


def fingerprint(url, table):
    return psql(url, f"SELECT count(*) || ':' || count(DISTINCT id) || ':' || "
                     f"md5(string_agg(md5(x::text), '' ORDER BY id)) FROM {table} x")


def copying(dst):
    """Whether a COPY into the destination database is running right now."""
    return int(psql(dst, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                         "AND state = 'active' AND query ILIKE 'COPY %'")) > 0


def kill_while_copying(p, dst, linger=0.0):
    """SIGKILLs `p` once its COPY into `dst` is running (after `linger`
    more seconds); answers whether it was killed mid-COPY (False: it ended
    first). `p` is stopped (SIGSTOP) before the COPY is looked at the last
    time: a stopped importer can neither end its COPY nor commit, so a COPY
    still running then proves the kill lands mid-flight."""
    deadline = time.time() + 60
    while time.time() < deadline and p.poll() is None:
        if copying(dst):
            time.sleep(linger)
            if p.poll() is not None:
                break
            p.send_signal(signal.SIGSTOP)
            if copying(dst):
                p.send_signal(signal.SIGKILL)
                p.wait()
                return True
            p.send_signal(signal.SIGCONT)
        time.sleep(0.005)
    p.wait()
    return False


def parts_left(dst):
    """How many tables of parts of `live` the destination holds."""
    return psql(dst, "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'live\\_\\_sluice\\_%'")


def run_import(src, dst, *extra):
    return subprocess.Popen([BIN, "import", "--from", src, "--table", "events", "--to", dst,
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_kill_nine_ten_times_then_every_row_exactly_once(dbs):
    src, dst = dbs
    psql(src, "CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz NOT NULL, "
              "body text, doc jsonb, amount numeric(8,1))")
    add_rows(src, 1, 200_000)
    first = run_import(src, dst, "--target", "events", "--change-column", "at")
    assert first.wait(120) == 0, first.stderr.read().decode()
    rng = random.Random(7)
    killed, finished, last = 0, 0, 200_000
    for i in range(10):
        loads_before = psql(dst, "SELECT count(*) FROM sluice_load_ledger")
        p = run_import(src, dst, "--target", "events", "--change-column", "at")
        if kill_while_copying(p, dst, linger=rng.uniform(0, 0.05)):
            killed += 1
            # Killed mid-flight: its window's ledger row never committed.
            assert psql(dst, "SELECT count(*) FROM sluice_load_ledger") == loads_before
        else:
            assert p.returncode == 0, p.stderr.read().decode()
            finished += 1
        # New rows keep arriving.
        add_rows(src, last + 1, last + 40_000)
        last += 40_000
    assert killed >= 5, f"only {killed} of 10 runs were killed while their COPY ran"
    done = run_import(src, dst, "--target", "events", "--change-column", "at")
    out, err = done.communicate(timeout=120)
    assert done.returncode == 0, err.decode()
    assert fingerprint(dst, "events") == fingerprint(src, "events")
    count, distinct, _ = fingerprint(dst, "events").split(":")
    assert count == distinct == str(last)
    windows = psql(dst, "SELECT count(*) FROM sluice_load_ledger")
    print(f"{killed} kills, {finished} finished before the kill, {windows} windows loaded")


def test_a_killed_full_load_leaves_the_live_table_as_it_was(dbs):
    src, dst = dbs
    psql(src, "CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz NOT NULL, "
              "body text, doc jsonb, amount numeric(8,1))")
    add_rows(src, 1, 1_000)
    first = run_import(src, dst, "--target", "live", "--mode", "destructive")
    assert first.wait(60) == 0
    before = fingerprint(dst, "live")
    add_rows(src, 1_001, 400_000)
    # One stream (this table is big enough to go in parts on two cores).
    p = run_import(src, dst, "--target", "live", "--mode", "destructive", "--parallel", "1")
    assert kill_while_copying(p, dst, linger=0.1), "the load ended before its COPY could be killed"
    assert fingerprint(dst, "live") == before
    tmp = psql(dst, "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'live__sluice_%'")
    assert tmp == "0", "the half-loaded table went with its transaction"


def test_a_load_in_parts_killed_mid_copy_leaves_the_live_table_and_the_next_sweeps_its_parts(dbs):
    src, dst = dbs
    psql(src, "CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz NOT NULL, "
              "body text, doc jsonb, amount numeric(8,1))")
    add_rows(src, 1, 1_000)
    first = run_import(src, dst, "--target", "live", "--parallel", "2")
    assert first.wait(60) == 0, first.stderr.read().decode()
    before = fingerprint(dst, "live")
    loads_before = psql(dst, "SELECT count(*) FROM sluice_load_ledger")
    add_rows(src, 1_001, 400_000)
    p = run_import(src, dst, "--target", "live", "--parallel", "2")
    assert kill_while_copying(p, dst, linger=0.1), "the load ended before its COPY could be killed"
    assert fingerprint(dst, "live") == before
    assert psql(dst, "SELECT count(*) FROM sluice_load_ledger") == loads_before
    # The parts commit into a table of their own, which the dead load left.
    left = parts_left(dst)
    assert left == "1", left
    again = run_import(src, dst, "--target", "live", "--parallel", "2", "--json")
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err.decode()
    assert json.loads(out)["parts"] == 2
    assert fingerprint(dst, "live") == fingerprint(src, "events")
    left = parts_left(dst)
    assert left == "0", "the next load in parts dropped the dead one's table"


def test_ctrl_c_mid_copy_says_what_was_left_and_loads_nothing_of_the_window(dbs):
    src, dst = dbs
    psql(src, "CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz NOT NULL, "
              "body text, doc jsonb, amount numeric(8,1))")
    add_rows(src, 1, 10_000)
    first = run_import(src, dst, "--target", "events", "--change-column", "at")
    assert first.wait(120) == 0, first.stderr.read().decode()
    before = fingerprint(dst, "events")
    loads_before = psql(dst, "SELECT count(*) FROM sluice_load_ledger")
    add_rows(src, 10_001, 500_000)
    p = run_import(src, dst, "--target", "events", "--change-column", "at")
    deadline = time.time() + 60
    interrupted = False
    while time.time() < deadline and p.poll() is None and not interrupted:
        if copying(dst):
            # Stopped, the importer cannot commit: a COPY still running
            # then proves the Ctrl-C lands mid-flight.
            p.send_signal(signal.SIGSTOP)
            if copying(dst):
                p.send_signal(signal.SIGINT)
                interrupted = True
            p.send_signal(signal.SIGCONT)
        time.sleep(0.005)
    assert interrupted, "the import ended before its COPY was seen"
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, (p.returncode, err.decode())
    assert "interrupted" in err.decode() and "rolled back" in err.decode(), err.decode()
    assert fingerprint(dst, "events") == before
    assert psql(dst, "SELECT count(*) FROM sluice_load_ledger") == loads_before
    # Run again: it continues after the last committed window.
    again = run_import(src, dst, "--target", "events", "--change-column", "at")
    assert again.wait(120) == 0, again.stderr.read().decode()
    assert fingerprint(dst, "events") == fingerprint(src, "events")
