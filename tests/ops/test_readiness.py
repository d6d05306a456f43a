"""Operating sluice: `/readyz` follows the metadata store (503 while it
does not answer, 200 again when it does), `/healthz` stays the liveness
probe, and a log written to a file carries no terminal colour codes."""

import requests

from conftest import Sluice, fresh_postgres_database, psql, PG_ADMIN, wait_for


def test_readyz_follows_the_store_and_the_log_has_no_colour_codes(tmp_path):
    url = fresh_postgres_database()
    name = url.rsplit("/", 1)[1]
    s = Sluice(tmp_path, url)
    try:
        assert requests.get(s.url + "/readyz", timeout=10).json() == {"status": "ready"}
        # The store stops answering: connections refused, the open ones cut.
        psql(PG_ADMIN, f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        psql(PG_ADMIN, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        # (a Response of a 503 is falsy: hand back its text)
        text = wait_for(lambda: (r := requests.get(s.url + "/readyz", timeout=10)).status_code == 503 and r.text,
                        "readyz to say 503")
        assert '"error":"unavailable"' in text.replace(" ", ""), text
        assert "metadata store does not answer" in text, text
        assert name not in text and "postgres" not in text, "the store's own words stay in the log"
        assert requests.get(s.url + "/healthz", timeout=10).status_code == 200, "still alive"
        psql(PG_ADMIN, f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        wait_for(lambda: requests.get(s.url + "/readyz", timeout=10).status_code == 200, "readyz to recover")
    finally:
        psql(PG_ADMIN, f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        s.stop()
    log = (tmp_path / "serve.log").read_text()
    assert "WARN" in log and "\x1b[" not in log, log[:500]


def test_a_new_store_says_what_to_do_next_and_a_used_one_does_not(tmp_path):
    s = Sluice(tmp_path, env={"SLUICE_LOG": "info"})
    s.new_org()
    s.stop()
    first = (tmp_path / "serve.log").read_text()
    assert "the store is new: make an organization with `sluice org create NAME`" in first, first
    s = Sluice(tmp_path, env={"SLUICE_LOG": "info"})
    s.stop()
    again = (tmp_path / "serve.log").read_text()
    assert "sluice listening" in again and "the store is new" not in again, again
