"""What every benchmark shares: which sluice binary it measures.

SLUICE_BIN names the binary (the CI smoke runs pass the debug build, whose
figures mean nothing but prove the benchmark still runs and checks what it
copies); without it, the release build is made and measured."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
BIN = os.environ.get("SLUICE_BIN") or str(TARGET / "release" / "sluice")


def ensure_built():
    """Builds the release binary unless SLUICE_BIN names one."""
    if not os.environ.get("SLUICE_BIN"):
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "sluice"], cwd=ROOT, check=True)


def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def proc_kib(pid, name, field):
    """A KiB field of /proc/PID/<name>: `status` (VmRSS, VmHWM) or
    `smaps_rollup` (Pss, Rss); 0 when missing."""
    for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0
