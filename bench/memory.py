#!/usr/bin/env python3
"""Memory under many large list requests: prints figures; fails when the
server's resident memory does not come back near where it started.

    .venv/bin/python bench/memory.py [--records 40] [--requests 3000]
                                     [--concurrency 200] [--backends sqlite,postgres]

For each metadata backend it starts a release `sluice serve`, makes an
organization whose records are as large as sluice lets them be (deployments
and channels with 64 KiB descriptions, the largest string a field takes),
then sends `--requests` list requests (deployments and channels, pages of
up to 100 records, several MB each) from `--concurrency` client threads at
once, `--rounds` times. It reads the server's RSS (VmRSS) before, at its
peak and 5 s after each round's last answer (its clients hung up). The
target is an RSS after within 20% of the one before; the benchmark fails
when the RSS grows from round to round by more than 20% (memory that is
never given back) or stays more than 16 MiB above its start.
"""
import argparse
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from common import BIN, ensure_built  # noqa: E402  (puts tests/ on the path)
from conftest import drop_postgres_database, fresh_postgres_database  # noqa: E402
from engine import cli, rss_kib, start  # noqa: E402

DESCRIPTION = 64 * 1024 - 1


def measure(backend, records, total, concurrency, rounds, settle):
    url_db = fresh_postgres_database() if backend == "postgres" else None
    with tempfile.TemporaryDirectory() as tmp:
        proc, url, _ = start(tmp, url_db)
        try:
            org = cli(tmp, url_db, "org", "create", "big", "--json")["organization_id"]
            user = cli(tmp, url_db, "user", "create", "--org", org, "big@example.com", "--json")
            auth = (f"user-{user['user_id']}", user["personal_access_token"])
            s = requests.Session()
            for i in range(records):
                d = (f"{i:05d}" + "d" * DESCRIPTION)[:DESCRIPTION]
                r = s.post(f"{url}/organizations/{org}/deployments", auth=auth,
                           json={"name": f"dep-{i}", "description": d})
                assert r.status_code == 200, r.text
                r = s.post(f"{url}/organizations/{org}/channels", auth=auth,
                           json={"name": f"ch-{i}", "description": d, "storage_type": "datalake"})
                assert r.status_code == 200, r.text
            paths = [f"/organizations/{org}/deployments", f"/organizations/{org}/channels?limit=100"]
            # Settle, then the starting figure.
            time.sleep(1)
            before = rss_kib(proc.pid)
            peak = [before]
            done = threading.Event()

            def sample():
                while not done.is_set():
                    peak[0] = max(peak[0], rss_kib(proc.pid))
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample)
            sampler.start()
            afters, elapsed, answered, size = [], 0.0, [0], [0]
            lock = threading.Lock()
            for _ in range(rounds):
                local = threading.local()
                sessions = []

                def one(i):
                    if not hasattr(local, "s"):
                        local.s = requests.Session()
                        with lock:
                            sessions.append(local.s)
                    r = local.s.get(url + paths[i % 2], auth=auth, timeout=300)
                    assert r.status_code == 200, r.text[:200]
                    with lock:
                        answered[0] += 1
                        size[0] += len(r.content)

                t0 = time.perf_counter()
                with ThreadPoolExecutor(concurrency) as pool:
                    list(pool.map(one, range(total)))
                elapsed += time.perf_counter() - t0
                # The clients hang up, as clients do.
                for c in sessions:
                    c.close()
                time.sleep(settle)
                afters.append(rss_kib(proc.pid))
            done.set()
            sampler.join()
            s.close()
            assert answered[0] == total * rounds
            return {"before": before, "peak": peak[0], "afters": afters, "elapsed": elapsed,
                    "mb": size[0] / 1e6}
        finally:
            proc.terminate()
            proc.wait()
            if url_db:
                drop_postgres_database(url_db)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=40)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--settle", type=float, default=5, help="seconds to wait after each round")
    ap.add_argument("--backends", default="sqlite,postgres")
    args = ap.parse_args()
    ensure_built()
    print(f"{args.records} deployments and {args.records} channels with {DESCRIPTION + 1} B descriptions; "
          f"{args.requests} list requests, {args.concurrency} at once")
    failed = False
    for backend in args.backends.split(","):
        m = measure(backend, args.records, args.requests, args.concurrency, args.rounds, args.settle)
        first, last = m["afters"][0], m["afters"][-1]
        growth = (first - m["before"]) / m["before"] * 100
        drift = (last - first) / first * 100
        print(f"{backend}: RSS before {m['before'] / 1024:.1f} MiB, peak {m['peak'] / 1024:.1f} MiB, "
              f"5 s after each round " + ", ".join(f"{a / 1024:.1f}" for a in m["afters"])
              + f" MiB: {growth:+.0f}% after the first round, {drift:+.0f}% from the first round to the last "
              f"(target: within 20%); {m['mb']:.0f} MB answered in {m['elapsed']:.1f} s")
        # A leak or fragmentation grows round after round; caches that fill
        # once (database page caches, connection buffers) do not.
        failed |= drift > 20 or first - m["before"] > 16 * 1024
    if failed:
        print("FAILED: resident memory grew from round to round, or stayed more than 16 MiB above "
              "its start", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
