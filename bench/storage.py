#!/usr/bin/env python3
"""Storage-to-storage benchmark: prints figures; fails when a file was not
moved exactly once with its bytes.

    .venv/bin/python bench/storage.py [--files 1000] [--kb 100] [--no-s3]

It starts a release `sluice serve` (SQLite metadata), deploys a Tailer
storage-to-storage configuration (template `*`, no archive) from a watched
local folder, drops `--files` files of `--kb` KB into it at once (written
aside, then renamed in) and measures until every file is in the destination
and gone from the source:

- folder → folder, files/s, beside `cp` of the same files between two
  folders (one process, no checks) — sluice also reads each copy back and
  compares its SHA-256 before it removes the source, and records a run per
  file;
- folder → S3: the same into moto's S3 server on loopback (a real HTTP S3
  API; its own speed bounds this figure).
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from engine import BIN, cli, ensure_built, start
from conftest import free_port

CONF = {
    "configuration_type": "storage-to-storage", "configuration_id": "000099-bench-move",
    "environment": "DEV", "account": "000099", "version": "3", "max_active_runs": 16,
    "filename_templates": [{"filename_template": "*"}],
    "source": {"type": "local", "bucket": "in", "prefix": "drop"},
    "destinations": [{"type": "local", "bucket": "out", "prefix": "moved"}],
}


def moto():
    port = free_port()
    server = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            requests.get(url, timeout=1)
            break
        except requests.ConnectionError:
            if time.time() > deadline:
                raise SystemExit("moto's S3 server did not start")
            time.sleep(0.1)
    requests.put(f"{url}/bench").raise_for_status()
    return proc, url


def make_files(folder, n, kb):
    folder.mkdir(parents=True)
    sums = {}
    for i in range(n):
        data = os.urandom(kb * 1024)
        name = f"f{i:05}.bin"
        (folder / name).write_bytes(data)
        sums[name] = hashlib.sha256(data).hexdigest()
    return sums


def move(url_out, n, kb, check):
    """Moves n files with sluice; answers seconds."""
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        proc, _, _ = start(d / "data", None, {"SLUICE_POLL_MS": "100"})
        try:
            org = cli(d / "data", None, "org", "create", "bench", "--account", "000099", "--json")["organization_id"]
            run = lambda *a: subprocess.run([BIN, *a, "--data-dir", str(d / "data")], check=True,  # noqa: E731
                                            capture_output=True, text=True)
            run("bucket", "add", "in", f"file://{d / 'in'}", "--org", org)
            run("bucket", "add", "out", url_out(d), "--org", org)
            (d / "conf.json").write_text(json.dumps(CONF))
            run("config", "deploy", str(d / "conf.json"), "--org", org)
            sums = make_files(d / "staged", n, kb)
            (d / "in" / "drop").mkdir(parents=True)
            t = time.perf_counter()
            for name in sums:
                os.rename(d / "staged" / name, d / "in" / "drop" / name)
            deadline = time.time() + 900
            while any((d / "in" / "drop").iterdir()):
                if time.time() > deadline:
                    raise SystemExit("files were not moved within 15 minutes")
                time.sleep(0.02)
            took = time.perf_counter() - t
            check(d, sums)
            return took
        finally:
            proc.terminate()
            proc.wait()


def check_folder(d, sums):
    moved = d / "out" / "moved"
    got = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in moved.iterdir()}
    if got != sums:
        raise SystemExit(f"the destination differs: {len(got)} files of {len(sums)}")


def cp_seconds(n, kb):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        make_files(d / "a", n, kb)
        (d / "b").mkdir()
        t = time.perf_counter()
        subprocess.run(f"cp {d / 'a'}/* {d / 'b'}/", shell=True, check=True)
        return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--kb", type=int, default=100)
    ap.add_argument("--no-s3", action="store_true")
    a = ap.parse_args()
    ensure_built()
    n, kb = a.files, a.kb
    cp = cp_seconds(n, kb)
    folder = move(lambda d: f"file://{d / 'out'}", n, kb, check_folder)
    print(f"{n} files of {kb} KB, dropped at once into a watched folder:")
    print(f"  cp, folder → folder:              {cp:6.2f} s  {n / cp:8.0f} files/s")
    print(f"  sluice, folder → folder:          {folder:6.2f} s  {n / folder:8.0f} files/s"
          f"  ({folder / cp:.0f}× cp; each copy read back and checked, a run recorded per file)")
    if not a.no_s3:
        proc, s3 = moto()
        try:
            def check_s3(d, sums):
                import boto3
                c = boto3.client("s3", endpoint_url=s3, aws_access_key_id="k", aws_secret_access_key="s",
                                 region_name="us-east-1")
                keys = []
                for page in c.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix="moved/"):
                    keys += [o["Key"] for o in page.get("Contents", [])]
                if sorted(k.split("/")[-1] for k in keys) != sorted(sums):
                    raise SystemExit(f"S3 holds {len(keys)} files of {len(sums)}")
            took = move(lambda d: f"s3://k:s@bench?endpoint={s3}&region=us-east-1", n, kb, check_s3)
            print(f"  sluice, folder → S3 (moto):       {took:6.2f} s  {n / took:8.0f} files/s")
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
