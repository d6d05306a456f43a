#!/usr/bin/env python3
"""Runs every benchmark and writes what they printed, with the machine, the
date and each command, to docs/benchmarks.md — the only place sluice's
figures come from (the README and the other docs point to it).

    .venv/bin/python bench/all.py                  # full size, release build
    .venv/bin/python bench/all.py --smoke --out F  # tiny sizes (CI): proves
                                                   # every benchmark still runs
                                                   # and checks what it copies

A benchmark that fails (a copy differs from its source, a run did not
succeed) fails this script; nothing is written then."""
import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

FULL = {
    "engine.py": [],
    "datalake.py": [],
    "import.py": [],
    "graphql.py": [],
    "memory.py": [],
    "actions.py": [],
    "storage.py": [],
    "api.py": [],
    "console.py": [],
    "load.py": [],
}
SMOKE = {
    "engine.py": ["--runs", "20", "--pandas-runs", "10", "--fresh-runs", "5", "--repeat", "1",
                  "--paced", "10", "--rate", "10", "--warm-versions", "2", "--cold-starts", "2"],
    "datalake.py": ["--files", "10", "--rate", "10"],
    "import.py": ["--rows", "20000", "--repeat", "2"],
    "graphql.py": ["--jobs", "60", "--requests", "20"],
    "memory.py": ["--records", "5", "--requests", "100", "--concurrency", "20", "--rounds", "2"],
    "actions.py": ["--launches", "10", "--rate", "10", "--dags", "1"],
    "storage.py": ["--files", "20", "--kb", "10"],
    "api.py": ["--records", "3000", "--page", "500"],
    "console.py": ["--runs", "2000", "--requests", "10"],
    "load.py": ["--runs", "5000", "--seconds", "3", "--rate", "100", "--submits", "10"],
}


def stamp():
    return f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}"


def commit():
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip() or "an unknown commit"


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor() or "unknown")
    mem = next((int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines()
                if l.startswith("MemTotal")), 0)
    return f"{os.cpu_count()} cores ({cpu}), {mem / 1024 / 1024:.0f} GiB, Linux {platform.release()}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    ap.add_argument("--only", help="comma-separated benchmark files: only their sections of --out "
                                   "are measured again, the others kept as they were measured")
    a = ap.parse_args()
    plan = SMOKE if a.smoke else FULL
    # One binary for every benchmark, built once: the release build unless
    # SLUICE_BIN names one.
    env = dict(os.environ)
    if not env.get("SLUICE_BIN"):
        target = Path(env.get("CARGO_TARGET_DIR", ROOT / "target"))
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "sluice"], cwd=ROOT, check=True)
        env["SLUICE_BIN"] = str(target / "release" / "sluice")
    if a.only:
        plan = {k: v for k, v in plan.items() if k in a.only.split(",")}
    sections = []
    for script, args in plan.items():
        cmd = [sys.executable, str(HERE / script), *args]
        shown = " ".join(["bench/" + script, *args])
        print(f"== {shown}", flush=True)
        t = time.perf_counter()
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        took = time.perf_counter() - t
        print(out.stdout, end="", flush=True)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            raise SystemExit(f"{shown} failed (exit {out.returncode})")
        sections.append((script, f"## `{shown}`\n\n(measured {stamp()} at {commit()}, {took:.0f} s)\n\n"
                                 f"```\n{out.stdout.rstrip()}\n```\n"))
    binary = "the release build" if env["SLUICE_BIN"].endswith("release/sluice") else env["SLUICE_BIN"]
    # Sections not measured now are kept as they were (each says when).
    kept = dict(sections)
    out_path = Path(a.out)
    if a.only and out_path.exists():
        for part in out_path.read_text().split("\n## ")[1:]:
            script = part.split("`bench/", 1)[1].split(" ", 1)[0].split("`", 1)[0]
            kept.setdefault(script, "## " + part.rstrip() + "\n")
    order = [s for s in FULL if s in kept]
    doc = (
        "# Benchmarks\n\n"
        "Written by `bench/all.py`"
        + (" at smoke size (figures mean nothing)" if a.smoke else "")
        + " from the benchmarks' own output; do not edit by hand.\n\n"
        f"- machine: {machine()}\n"
        f"- binary: {binary}\n\n"
        "Each benchmark's docstring says what it measures and how.\n\n"
        + "\n".join(kept[s] for s in order)
    )
    Path(a.out).write_text(doc)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
