#!/usr/bin/env python3
"""Memory under many large list requests: prints figures; fails when the
server's resident memory does not come back near where it started.

    .venv/bin/python bench/memory.py [--records 100] [--requests 3000]
                                     [--concurrency 200] [--backends sqlite,postgres]

For each metadata backend it starts a release `sluice serve`, makes an
organization whose records are as large as sluice lets them be (deployments
and channels with 64 KiB descriptions, the largest string a field takes),
then sends `--requests` list requests (deployments and channels, pages of
up to 100 records, several MB each) from `--concurrency` client threads at
once. It reads the server's RSS (VmRSS) before, at its peak and 5 s after
the last answer; the target is an RSS after within 20% of the one before.
"""
import argparse
import os
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


def measure(backend, records, total, concurrency):
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
            local = threading.local()
            sessions = []
            answered = [0]
            size = [0]
            lock = threading.Lock()

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
            elapsed = time.perf_counter() - t0
            done.set()
            sampler.join()
            # The clients hang up, as clients do.
            for c in sessions:
                c.close()
            s.close()
            time.sleep(5)
            after = rss_kib(proc.pid)
            assert answered[0] == total
            return {"before": before, "peak": peak[0], "after": after, "elapsed": elapsed,
                    "mb": size[0] / 1e6}
        finally:
            proc.terminate()
            proc.wait()
            if url_db:
                drop_postgres_database(url_db)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--backends", default="sqlite,postgres")
    args = ap.parse_args()
    ensure_built()
    print(f"binary: {os.path.relpath(BIN)}")
    print(f"{args.records} deployments and {args.records} channels with {DESCRIPTION + 1} B descriptions; "
          f"{args.requests} list requests, {args.concurrency} at once")
    failed = False
    for backend in args.backends.split(","):
        m = measure(backend, args.records, args.requests, args.concurrency)
        growth = (m["after"] - m["before"]) / m["before"] * 100
        print(f"{backend}: RSS before {m['before'] / 1024:.1f} MiB, peak {m['peak'] / 1024:.1f} MiB, "
              f"5 s after {m['after'] / 1024:.1f} MiB ({growth:+.0f}%; target within 20%); "
              f"{m['mb']:.0f} MB answered in {m['elapsed']:.1f} s")
        failed |= growth > 20
    if failed:
        print("FAILED: resident memory did not come back within 20% of its start", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
