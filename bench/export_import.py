"""Peak RSS (and speed) of `mynosql export` and `mynosql import` on a database of many small records.

Usage: python bench/export_import.py [--n 1000000] [--out bench/results/export_import.md]
Each step runs in its own process; its peak RSS comes from os.wait4 (ru_maxrss of that process alone).
Aim: export and import of 1,000,000 records each stay under 150 MB.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AIM_MB = 150.0

CREATE = """
import sys, MyNoSQL
n = int(sys.argv[2])
with MyNoSQL.MyNoSQL(sys.argv[1], options=MyNoSQL.Options(background_sync=False)) as h:
    h.opendb("src")
    save = h.savedoc
    for i in range(n):
        save({"id": f"rec-{i:08d}", "i": i, "sensor": f"s-{i % 50}", "v": (i * 7919) % 1000 / 10})
"""


def run(args: list[str], **kw: object) -> tuple[float, float, int]:
    """Run a command; return (seconds, peak RSS MB of that process, exit code)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, **kw)  # type: ignore[call-overload]
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - t0, usage.ru_maxrss / 1024, proc.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "export_import.md")
    a = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="mynosql-expimp-") as tmp:
        d = Path(tmp)
        create_s, create_mb, rc = run([py, "-c", CREATE, str(d), str(a.n)])
        assert rc == 0, "creating the database failed"
        dump = d / "dump.jsonl"
        with open(dump, "wb") as f:
            exp_s, exp_mb, rc = run([py, "-m", "MyNoSQL", "export", "--path", str(d), "--db", "src"], stdout=f,
                                    stderr=subprocess.DEVNULL)
        assert rc == 0, "export failed"
        with open(dump, "rb") as f:
            lines = sum(1 for _ in f)
        imp_s, imp_mb, rc = run([py, "-m", "MyNoSQL", "import", "--path", str(d), "--db", "dst", str(dump)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert rc == 0, "import failed"
        dump_mb = dump.stat().st_size / 1e6
    rows = [
        ("create (savedoc loop, context)", create_s, create_mb, None),
        ("export", exp_s, exp_mb, AIM_MB),
        ("import", imp_s, imp_mb, AIM_MB),
    ]
    cmd = "python " + " ".join(shlex.quote(x) for x in sys.argv)
    out = [
        "# export / import memory benchmark", "",
        f"- Command: `{cmd}`",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"- Machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        f"- {a.n:,} records; the dump is {dump_mb:,.1f} MB of JSON Lines ({lines:,} lines)", "",
        "| step | seconds | records/s | peak RSS (MB) | aim | met? |", "|---|---:|---:|---:|---|---|",
    ]
    for name, s, mb, aim in rows:
        met = "" if aim is None else ("yes" if mb < aim else "**NO**")
        out.append(f"| {name} | {s:,.1f} | {a.n / s:,.0f} | {mb:,.1f} | {f'< {aim:.0f} MB' if aim else '—'} | {met} |")
    text = "\n".join(out) + "\n"
    print(text)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    return 0 if all(aim is None or mb < aim for _n, _s, mb, aim in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
