"""SQLite held by another process: while a second process holds the store's
write lock for seconds (a transaction that has written and not
committed), submits through the API wait for it and then succeed — none
fails, and each run is stored once."""
import sqlite3
import threading
import time

import requests

from conftest import Sluice, deployment_of

HOLD = 3.0


def test_a_submit_waits_for_another_process_holding_the_write_lock(tmp_path):
    s = Sluice(tmp_path, worker=False)
    try:
        session, dep_url, ver = deployment_of(s, "def handler(request, context):\n    return {}\n")
        before = len(session.get(f"{dep_url}/runs").json()["entries"])
        db = sqlite3.connect(s.data_dir / "sluice.db", timeout=30, isolation_level=None,
                             check_same_thread=False)
        db.execute("BEGIN IMMEDIATE")
        # It writes, so a reader's snapshot taken before its commit is stale.
        db.execute("UPDATE deployments SET description = description || '' WHERE 1 = 1")
        locked_at = time.monotonic()
        release = threading.Timer(HOLD, lambda: db.execute("COMMIT"))
        release.start()
        answers = []

        def submit(i):
            t0 = time.monotonic()
            r = requests.post(f"{dep_url}/runs", json={"version_id": ver, "input_data": {"i": i}},
                              auth=session.auth, timeout=60)
            answers.append((r.status_code, r.text, t0 - locked_at, time.monotonic() - locked_at))

        threads = [threading.Thread(target=submit, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        release.join()
        db.close()
        assert all(code == 200 for code, *_ in answers), answers
        # They were sent while the lock was held, and answered only after
        # it was let go: they waited, they did not fail.
        assert all(sent < HOLD - 1 and done >= HOLD - 0.05 for _, _, sent, done in answers), answers
        runs = session.get(f"{dep_url}/runs").json()["entries"]
        assert len(runs) == before + 4
        assert sorted(r["input_data"]["i"] for r in runs[:4]) == [0, 1, 2, 3]
    finally:
        s.stop()
