#!/usr/bin/env python3
"""Table import benchmark: sluice against the psql COPY pipes, side by side.
Prints figures; fails when any copy differs from the source.

    .venv/bin/python bench/import.py [--rows 1000000] [--repeat 3]

On the local PostgreSQL (SLUICE_TEST_POSTGRES_URL, default
postgres://postgres@127.0.0.1:5432/postgres) it makes a source database
with a table of `--rows` rows and ten columns (bigint, timestamptz, text,
int, double, boolean, jsonb, nullable text, numeric(12,2), date) and a
destination database, then times, each `--repeat` times (median shown; the tools take turns going first, so
no tool always meets a cold or a warm cache):

- the pipes: psql -c "\\copy (select …) to stdout" | psql -c "\\copy … from
  stdin" into an empty table of the same shape, in text format and in
  binary format;
- `sluice import --mode destructive` (release build) of the same table, in
  the parts it chooses, then with `--parallel 2` and `--parallel 4` (ctid
  ranges over as many pairs of connections); its peak RSS (from wait4);
- for each copy, the CPU seconds the whole machine spent during it (both
  databases' backends and the tool: see `machine_cpu`), and so the least
  time sluice's copy could take with every core busy;
- an incremental run that finds 10,000 new rows, and one that finds none
  (the time sluice reports for the work, and the whole command with its
  process start), without and then with an index on the change column;
- `sling` too, when it is on PATH (pip install sling-linux-amd64), as many
  times, its copy checked the same way;
- a persistent job inside a running `sluice serve`: its first query (the
  whole table, batches staged beside the load) side by side with `sluice
  import` of the same table, `--repeat` of each, order alternated, and
  their ratio, and the CPU seconds each spent (the server's from
  /proc during the query, its idle loops included; the import's from
  wait4); then a query finding 10,000 new rows, and ones finding none,
  each timed by its own record (claimed → ended); and what this machine's
  page cache costs a writer, growing and reusing its pages (see
  `page_cache`).
Every copy's row count and checksum over every column is compared with the
source's: a difference fails the benchmark.
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from common import BIN, ensure_built, median

ADMIN = os.environ.get("SLUICE_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
BASE = ADMIN.rsplit("/", 1)[0]


def psql(db, *sql, capture=False):
    args = ["psql", f"{BASE}/{db}", "-v", "ON_ERROR_STOP=1", "-qAt"]
    for s in sql:
        args += ["-c", s]
    out = subprocess.run(args, check=True, capture_output=True, text=True)
    return out.stdout.strip()


def checksum(db, table):
    return psql(db, f"SELECT count(*) || ' rows, md5 ' || md5(string_agg(md5(x::text), '' "
                    f"ORDER BY id)) FROM {table} x")


def make_source(db, rows):
    psql(db, """CREATE TABLE bench (
        id bigint PRIMARY KEY, at timestamptz NOT NULL, name text, n int,
        score double precision, ok boolean, doc jsonb, note text,
        amount numeric(12,2), day date)""")
    add_rows(db, 1, rows)
    psql(db, "ANALYZE bench")


def add_rows(db, first, last):
    psql(db, f"""INSERT INTO bench SELECT g,
        timestamptz '2026-01-01' + g * interval '1 second', 'name ' || g, g % 1000,
        g / 7.0, g % 2 = 0, jsonb_build_object('k', g, 'tags', jsonb_build_array('a', 'b')),
        CASE WHEN g % 5 = 0 THEN NULL ELSE 'note ' || (g % 97) END,
        (g % 1000000) / 100.0, date '2020-01-01' + (g % 3000)
        FROM generate_series({first}, {last}) g""")


def same(what, want, got):
    """Fails the benchmark when a copy differs from its source."""
    print(f"  {what:10} {got}")
    if got != want:
        raise SystemExit(f"{what}: the copy differs from the source ({got} vs {want})")


def page_cache(size, files=4):
    """The CPU seconds this machine spends writing `size` bytes into new
    files: kept, so that the page cache grows (on a virtual machine whose
    memory was never touched, each new page is backed by the host at its
    first touch), and deleted after each, so that the cache gives its pages
    back for the next (medians, the first file of each left out)."""
    import tempfile
    chunk = os.urandom(1 << 20)
    grown, reused = [], []
    with tempfile.TemporaryDirectory(prefix="sluice-bench-cache-") as d:
        for keep, into in ((True, grown), (False, reused)):
            for n in range(files):
                path = Path(d) / f"{keep}-{n}"
                before = resource.getrusage(resource.RUSAGE_SELF)
                with open(path, "wb") as f:
                    for _ in range(max(1, size >> 20)):
                        f.write(chunk)
                after = resource.getrusage(resource.RUSAGE_SELF)
                if n:
                    into.append(after.ru_stime - before.ru_stime + after.ru_utime - before.ru_utime)
                if not keep:
                    path.unlink()
    return statistics.median(grown), statistics.median(reused)


def machine_cpu():
    """CPU seconds every process of this machine has used so far (user,
    nice, system, irq and softirq of /proc/stat's first line): a copy's
    work counted whoever did it — both databases' backends, their WAL
    writers, the tool."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (f[0] + f[1] + f[2] + f[5] + f[6]) / os.sysconf("SC_CLK_TCK")


def timed(cmd, shell=False, env=None):
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, shell=shell, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - t
    out = proc.stdout.read().decode()
    err = proc.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed: {err}")
    return took, usage.ru_maxrss / 1024, out, usage.ru_utime + usage.ru_stime


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    ensure_built()
    tag = uuid.uuid4().hex[:8]
    src, dst = f"bench_src_{tag}", f"bench_dst_{tag}"
    psql("postgres", f"CREATE DATABASE {src}", f"CREATE DATABASE {dst}")
    try:
        t = time.perf_counter()
        make_source(src, a.rows)
        size = psql(src, "SELECT pg_size_pretty(pg_total_relation_size('bench'))")
        print(f"source: {a.rows} rows, 10 columns, made in {time.perf_counter() - t:.1f} s ({size})")
        want = checksum(src, "bench")
        shape = psql(src, "SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' "
                          "ORDER BY a.attnum) FROM pg_attribute a WHERE a.attrelid = 'bench'::regclass "
                          "AND a.attnum > 0")
        select = "SELECT * FROM bench"

        pipe_text = (f"psql {BASE}/{src} -qc \"\\copy ({select}) to stdout\" | "
                     f"psql {BASE}/{dst} -qc \"\\copy pipe from stdin\"")
        pipe_binary = (f"psql {BASE}/{src} -qc \"\\copy ({select}) to stdout with (format binary)\" | "
                       f"psql {BASE}/{dst} -qc \"\\copy pipe_binary from stdin with (format binary)\"")
        env = dict(os.environ, SRC=f"{BASE}/{src}", DST=f"{BASE}/{dst}")
        tools = {
            "psql pipe": (lambda: psql(dst, "DROP TABLE IF EXISTS pipe", f"CREATE TABLE pipe ({shape})"),
                          lambda: timed(pipe_text, shell=True), "pipe"),
            "psql binary": (lambda: psql(dst, "DROP TABLE IF EXISTS pipe_binary",
                                         f"CREATE TABLE pipe_binary ({shape})"),
                            lambda: timed(pipe_binary, shell=True), "pipe_binary"),
        }

        def sluice(target, *parallel):
            # The same job each time: a destructive load replaces its own table.
            return (lambda: None,
                    lambda: timed([BIN, "import", "--from", f"{BASE}/{src}", "--table", "bench",
                                   "--to", f"{BASE}/{dst}", "--target", target, "--mode", "destructive",
                                   "--job", target, "--json", *parallel]), target)
        # As a user runs it (the degree it chooses), then in 2 and 4 parts.
        tools["sluice"] = sluice("copied")
        tools["sluice ×2"] = sluice("copied_p2", "--parallel", "2")
        tools["sluice ×4"] = sluice("copied_p4", "--parallel", "4")
        if shutil.which("sling"):
            tools["sling"] = (lambda: None,
                              lambda: timed(["sling", "run", "--src-conn", "SRC", "--src-stream", "public.bench",
                                             "--tgt-conn", "DST", "--tgt-object", "public.slung",
                                             "--mode", "full-refresh"], env=env), "slung")
        times = {name: [] for name in tools}
        cpus = {name: [] for name in tools}
        peaks = {name: [] for name in tools}
        parts = {}
        names = list(tools)
        for i in range(a.repeat):
            for name in names[i % len(names):] + names[:i % len(names)]:
                prepare, run, _ = tools[name]
                prepare()
                before = machine_cpu()
                took, peak, out, _ = run()
                cpus[name].append(machine_cpu() - before)
                times[name].append(took)
                peaks[name].append(peak)
                if name.startswith("sluice"):
                    parts[name] = json.loads(out)["parts"]
        base = median(times["psql pipe"])
        cores = os.cpu_count()
        print(f"{'tool':12} {'seconds':>8} {'× pipe':>7} {'CPU s':>6} {'busy':>5} {'peak RSS':>9}   "
              f"(median of {a.repeat})")
        for name in names:
            t = median(times[name])
            cpu = median(cpus[name])
            rss = f"{max(peaks[name]):>7.1f}MB" if name.startswith(("sluice", "sling")) else ""
            how = f"  {parts[name]} part{'s' if parts[name] > 1 else ''}" if name in parts else ""
            print(f"{name:12} {t:>8.2f} {t / base:>7.2f} {cpu:>6.2f} {cpu / (t * cores):>5.0%} {rss:>9}{how}")
        least = min(median(cpus[name]) for name in names if name.startswith("sluice"))
        print(f"(CPU s: the whole machine's, every process, during the copy; busy: of its {cores} cores. "
              f"sluice's least CPU, {least:.2f} s, takes at least {least / cores:.2f} s on {cores} "
              f"cores fully busy: {least / cores / base:.2f}× the pipe)")
        print(f"(sluice chose {parts['sluice']} part(s) for this table on {os.cpu_count()} cores; "
              "×2 and ×4 ask with --parallel)")
        if "sling" not in tools:
            print("(sling is not installed here: not measured)")
        print("every copy against the source:")
        print(f"  {'source':10} {want}")
        for name in names:
            same(name, want, checksum(dst, tools[name][2]))
        print("sluice's types: " + psql(dst, "SELECT string_agg(format_type(a.atttypid, a.atttypmod), ', ' "
                                             "ORDER BY a.attnum) FROM pg_attribute a WHERE "
                                             "a.attrelid = 'copied'::regclass AND a.attnum > 0"))

        # Incremental: a first load, then 10,000 new rows, then none; on the
        # table as it is, then with an index on the change column (as a
        # table read incrementally usually has).
        def incremental(target):
            took, _, out, _ = timed([BIN, "import", "--from", f"{BASE}/{src}", "--table", "bench",
                                  "--to", f"{BASE}/{dst}", "--target", target, "--change-column",
                                  "at", "--json"])
            return took, json.loads(out)
        first = a.rows
        for label, target in [("no index on `at`", "inc"), ("index on `at`", "inc_indexed")]:
            if target == "inc_indexed":
                psql(src, "CREATE INDEX bench_at ON bench (at)", "ANALYZE bench")
            incremental(target)
            new = []
            for _ in range(a.repeat):
                add_rows(src, first + 1, first + 10_000)
                first += 10_000
                new.append(incremental(target))
                if new[-1][1]["rows"] != 10_000:
                    raise SystemExit(f"{target}: loaded {new[-1][1]['rows']} rows of 10,000 new ones")
            work = median([r["seconds"] for _, r in new])
            whole = median([t for t, _ in new])
            print(f"{label}: incremental, 10,000 new rows: {work * 1000:.1f} ms of work, "
                  f"{whole * 1000:.1f} ms with process start (median of {a.repeat})")
            none = [incremental(target) for _ in range(max(5, a.repeat))]
            if any(r["rows"] for _, r in none):
                raise SystemExit(f"{target}: a run with no new rows loaded some")
            work = median([r["seconds"] for _, r in none])
            whole = median([t for t, _ in none])
            print(f"{label}: incremental, no new rows:     {work * 1000:.1f} ms of work, "
                  f"{whole * 1000:.1f} ms with process start (median of {len(none)})")
            same(target, checksum(src, "bench"), checksum(dst, target))
        first = job_figures(src, dst, first, a.repeat)
    finally:
        psql("postgres", f"DROP DATABASE IF EXISTS {src}", f"DROP DATABASE IF EXISTS {dst}")


def job_figures(src, dst, first, repeat):
    """A persistent job inside a running `sluice serve`: its first query
    (the whole table, batches staged beside the load) side by side with
    `sluice import` of the same table (incremental on `at`, a first load),
    `repeat` of each, order alternated; then a query finding 10,000 new
    rows, then queries finding none. A query's time is its own in the
    server (claimed → ended, from its record); an import's is its work
    (`seconds` in its JSON, the process start left out)."""
    import tempfile
    import socket
    data = tempfile.mkdtemp(prefix="sluice-bench-")
    store = ["--data-dir", data]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(Path(data) / "serve.log", "w")
    serve = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{port}", *store],
                             stdout=log, stderr=subprocess.STDOUT)
    try:
        import urllib.request
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                if time.time() > deadline or serve.poll() is not None:
                    raise RuntimeError("sluice serve did not start: " + (Path(data) / "serve.log").read_text())
                time.sleep(0.02)

        def cli(*args):
            out = subprocess.run([BIN, *args, *store, "--json"], capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"sluice {' '.join(args)}: {out.stderr}")
            return json.loads(out.stdout)
        org = cli("org", "create", "bench")["organization_id"]

        def make_job(target):
            job_file = Path(data) / f"{target}.toml"
            job_file.write_text(f'source = "{BASE}/{src}"\ntable = "bench"\ndestination = "{BASE}/{dst}"\n'
                                f'target = "{target}"\nchange_column = "at"\n')
            return cli("job", "create", "--org", org, "--file", str(job_file))["job"]["id"]

        def query_time(q):
            from datetime import datetime
            f = "%Y-%m-%dT%H:%M:%S.%fZ"
            return (datetime.strptime(q["finished_at"], f) - datetime.strptime(q["started_at"], f)).total_seconds()

        def first_query(job):
            # The first query is made by the scheduler at once.
            deadline = time.time() + 600
            while True:
                qs = cli("job", "queries", job, "--org", org, "--limit", "1")
                if qs and qs[0]["finished_at"]:
                    if qs[0]["status"] != "SUCCEEDED":
                        raise RuntimeError(f"the first query failed: {qs[0]}")
                    return qs[0]
                if time.time() > deadline or serve.poll() is not None:
                    raise RuntimeError("the first query did not end: " + (Path(data) / "serve.log").read_text())
                # Not oftener: each look is a process of its own, and on two
                # cores one every 50 ms took CPU from the query it watched
                # (the query's time is its record's, not this loop's).
                time.sleep(0.5)

        def serve_stat():
            # The server's CPU seconds (user + system, every thread) and
            # minor page faults.
            f = Path(f"/proc/{serve.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK"), int(f[7])

        queries, imports, jobs, query_cpu, import_cpu = [], [], [], [], []
        query_faults, import_faults = [], []
        for i in range(repeat):
            for kind in (("job", "import") if i % 2 == 0 else ("import", "job")):
                if kind == "job":
                    cpu, faults = serve_stat()
                    jobs.append(make_job(f"job_copy_{i}"))
                    q = first_query(jobs[-1])
                    queries.append(query_time(q))
                    cpu_after, faults_after = serve_stat()
                    query_cpu.append(cpu_after - cpu)
                    query_faults.append(faults_after - faults)
                else:
                    faults = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
                    _, _, out, cpu = timed([BIN, "import", "--from", f"{BASE}/{src}", "--table", "bench",
                                       "--to", f"{BASE}/{dst}", "--target", f"import_copy_{i}",
                                       "--change-column", "at", "--json"])
                    imports.append(json.loads(out)["seconds"])
                    import_cpu.append(cpu)
                    import_faults.append(resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - faults)
        want = checksum(src, "bench")
        for i in range(repeat):
            same(f"job_copy_{i}", want, checksum(dst, f"job_copy_{i}"))
            same(f"import_copy_{i}", want, checksum(dst, f"import_copy_{i}"))
        qm, im = statistics.median(queries), statistics.median(imports)
        print(f"job in serve, first query (whole table, {first:,} rows, staged): {qm:.2f} s; "
              f"sluice import of the same table: {im:.2f} s; job / import = {qm / im:.2f}× "
              f"(medians of {repeat}, order alternated)")
        print(f"CPU: sluice serve during the first query {statistics.median(query_cpu):.2f} s "
              f"(its idle loops included), sluice import {statistics.median(import_cpu):.2f} s")
        print(f"page faults: sluice serve during the first query {statistics.median(query_faults):,.0f}, "
              f"sluice import {statistics.median(import_faults):,.0f}")
        size = int(psql(src, "SELECT pg_total_relation_size('bench')"))
        grown, reused = page_cache(size)
        print(f"this machine's page cache, {size / 1e6:.0f} MB written to a new file: {grown:.2f} s of CPU "
              f"as the cache grows, {reused:.2f} s into pages it gave back (a query's staged batches "
              "are written through and dropped from it)")
        job = jobs[0]

        def ended(qid):
            deadline = time.time() + 600
            while time.time() < deadline:
                for q in cli("job", "queries", job, "--org", org, "--limit", "5"):
                    if q["id"] == qid and q["finished_at"]:
                        return q
                time.sleep(0.05)
            raise RuntimeError("the query did not end")

        add_rows(src, first + 1, first + 10_000)
        first += 10_000
        q = ended(cli("job", "run", job, "--org", org, "--detach")["id"])
        print(f"job in serve, 10,000 new rows: {query_time(q) * 1000:.1f} ms ({q['records']} rows)")
        times = []
        for _ in range(5):
            q = ended(cli("job", "run", job, "--org", org, "--detach")["id"])
            times.append(query_time(q))
            if q["records"] != 0:
                raise SystemExit(f"a query with no new rows loaded {q['records']}")
        print(f"job in serve, no new rows: {statistics.median(times) * 1000:.1f} ms (median of 5)")
        same("job_copy_0", checksum(src, "bench"), checksum(dst, "job_copy_0"))
    finally:
        serve.terminate()
        serve.wait()
        shutil.rmtree(data, ignore_errors=True)
    return first


if __name__ == "__main__":
    sys.exit(main())
