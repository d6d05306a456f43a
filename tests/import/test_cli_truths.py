"""What the CLI says must be true: a command run in the wrong folder does
not make a store there and names the store it looked in; a user error is a
message, never a backtrace; an unknown trigger is "not found"; every flag of
every command has help text (read from the commands' own --help, so a new
flag cannot forget it); a destination table belongs to one job (the second
job naming it is refused with the first one's id); a job's paths are stored
absolute; a deleted job's run says it is deleted."""
import json
import os
import re
import sqlite3
import subprocess

import pytest

from conftest import BIN, Sluice


def run(*args, cwd=None, env=None):
    return subprocess.run([BIN, *args], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture
def server(tmp_path):
    s = Sluice(tmp_path)
    yield s
    s.stop()


def test_a_command_in_the_wrong_folder_creates_no_store_and_names_the_one_it_looked_in(tmp_path):
    wrong = tmp_path / "elsewhere"
    wrong.mkdir()
    env = dict(os.environ, RUST_BACKTRACE="1")
    env.pop("SLUICE_DATA_DIR", None)
    for args in (["user", "create", "--org", "1234567890123", "a@b.c"],
                 ["auth", "get-token", "--org", "1234567890123"],
                 ["job", "list", "--org", "1234567890123"],
                 ["space", "list", "--org", "1234567890123"]):
        out = run(*args, cwd=wrong, env=env)
        assert out.returncode != 0, args
        assert str(wrong / "sluice-data" / "sluice.db") in out.stderr, out.stderr
        assert "backtrace" not in out.stderr.lower(), out.stderr
    assert not (wrong / "sluice-data" / "sluice.db").exists(), "no store was made"


def test_not_found_names_the_store_and_user_errors_have_no_backtrace(server):
    env = dict(os.environ, RUST_BACKTRACE="1")
    out = run("user", "create", "--org", "1234567890123", "a@b.c", *server.store_args(), env=env)
    assert out.returncode != 0
    assert "not found" in out.stderr and str(server.data_dir / "sluice.db") in out.stderr, out.stderr
    assert "stack backtrace" not in out.stderr, out.stderr
    out = run("trigger", "events", "tri-1234567890123456", *server.store_args(), env=env)
    assert out.returncode != 0 and "not found" in out.stderr, (out.stdout, out.stderr)


def test_user_create_reads_the_organization_from_the_environment(server):
    org = server.cli_json("org", "create", "acme")["organization_id"]
    out = run("user", "create", "dev@acme.io", "--json", *server.store_args(),
              env=dict(os.environ, SLUICE_ORG=org))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["organization_id"] == org


def commands(path=()):
    """Every command path of the CLI, from its own --help."""
    out = run(*path, "--help").stdout
    section = re.search(r"Commands:\n(.*?)(\n\n|$)", out, re.S)
    subs = [] if not section else [l.split()[0] for l in section.group(1).splitlines() if l.strip()]
    yield path
    for s in subs:
        if s != "help":
            yield from commands(path + (s,))


def test_every_flag_of_every_command_has_help_text():
    seen, bare = 0, []
    for path in commands():
        out = run(*path, "--help").stdout
        options = out.split("Options:\n", 1)[1] if "Options:\n" in out else ""
        lines = options.splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"^\s+(-\w, )?(--[\w-]+)( <[^>]+>)?(.*)$", line)
            if not m:
                continue
            seen += 1
            described = m.group(4).strip() or (i + 1 < len(lines) and re.match(r"^\s{8,}\S", lines[i + 1])
                                                and not lines[i + 1].lstrip().startswith("-"))
            if not described:
                bare.append(f"sluice {' '.join(path)} {m.group(2)}")
    assert seen > 50, f"only {seen} flags were read: the help format changed"
    assert not bare, "flags without help text: " + ", ".join(bare)


def test_a_destination_table_belongs_to_one_job_and_paths_are_stored_absolute(server, tmp_path):
    org = server.cli_json("org", "create", "acme")["organization_id"]
    src = tmp_path / "src.db"
    c = sqlite3.connect(src)
    c.execute("CREATE TABLE events (id INTEGER, at TIMESTAMP)")
    c.execute("INSERT INTO events VALUES (1, '2026-01-01 10:00:00')")
    c.commit()
    job = tmp_path / "job.toml"
    # Relative paths, as a user writes them next to the file.
    job.write_text('source = "sqlite://src.db"\ntable = "events"\ntarget = "events"\n'
                   'destination = "sqlite://wh.db"\nchange_column = "at"\n')
    first = subprocess.run([BIN, "job", "create", "--org", org, "--file", str(job), "--json",
                            *server.store_args()], cwd=tmp_path, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    made = json.loads(first.stdout)["job"]
    assert made["destination"] == f"sqlite://{tmp_path / 'wh.db'}", made
    assert made["source"] == f"sqlite://{tmp_path / 'src.db'}", made
    second = subprocess.run([BIN, "job", "create", "--org", org, "--file", str(job), "--json",
                             *server.store_args()], cwd=tmp_path, capture_output=True, text=True)
    assert second.returncode != 0
    assert made["id"] in second.stderr, second.stderr
    jobs = server.cli_json("job", "list", "--org", org)
    assert [j["id"] for j in jobs] == [made["id"]], jobs
    # A deleted job gives its table up; its run says it is deleted.
    server.cli("job", "delete", made["id"], "--org", org)
    out = run("job", "run", made["id"], "--org", org, *server.store_args())
    assert out.returncode != 0 and "is deleted" in out.stderr and "resume" not in out.stderr, out.stderr
    again = subprocess.run([BIN, "job", "create", "--org", org, "--file", str(job), "--json",
                            *server.store_args()], cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr


def test_start_and_end_without_a_change_column_are_refused(tmp_path):
    src = tmp_path / "src.db"
    sqlite3.connect(src).execute("CREATE TABLE t (id INTEGER)").connection.commit()
    out = run("import", "--from", f"sqlite://{src}", "--table", "t", "--to", f"sqlite://{tmp_path}/w.db",
              "--target", "t", "--start", "2026-01-01", "--end", "2026-01-02")
    assert out.returncode != 0 and "--change-column" in out.stderr, out.stderr
    assert not (tmp_path / "w.db").exists() or sqlite3.connect(tmp_path / "w.db").execute(
        "SELECT count(*) FROM sqlite_master WHERE name = 't'").fetchone() == (0,)
