"""Peak RSS (and speed) of `mynosql export` and `mynosql import` on a database of many small records.

Usage: python bench/export_import.py [--n 1000000] [--out bench/results/export_import.md]
       python bench/export_import.py --quick    # smoke run: 2,000 records, bench/results/export_import-quick.md
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


def git_text() -> str:
    """The commit measured: ``git abc1234``, and whether src/ had uncommitted changes."""
    def git(*a: str) -> str:
        try:
            r = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=False, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return r.stdout.strip() if r.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--", "src")
    return f"git {head}" + (" with uncommitted changes under src/" if dirty else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None, help="records (default 1000000; --quick 2000)")
    ap.add_argument("--out", type=Path, default=None, help="Markdown report (default "
                    "bench/results/export_import.md; --quick: bench/results/export_import-quick.md)")
    ap.add_argument("--quick", action="store_true", help="a smoke run with few records")
    a = ap.parse_args()
    a.n = a.n if a.n is not None else (2_000 if a.quick else 1_000_000)
    if a.n < 1:
        ap.error("--n must be positive")
    a.out = a.out or ROOT / "bench" / "results" / ("export_import-quick.md" if a.quick else "export_import.md")
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
        f"- MyNoSQL from {ROOT / 'src'} ({git_text()})",
        f"- {a.n:,} records; the dump is {dump_mb:,.1f} MB of JSON Lines ({lines:,} lines)"
        + (" (--quick: a smoke run; the aim is for 1,000,000 records)" if a.quick else ""), "",
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
