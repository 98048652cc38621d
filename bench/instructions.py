#!/usr/bin/env python3
"""Instructions per ``savedoc`` and per cached ``readdoc``, counted by valgrind's callgrind: a figure this noisy
machine cannot move (wall-clock rates move by 10-20% between runs), for comparing two versions of the hot paths.

Run from the repository root (needs ``valgrind``; Debian: ``apt-get install valgrind``)::

    .venv/bin/python bench/instructions.py                 # this checkout's src/
    .venv/bin/python bench/instructions.py --src OTHER/src # another version, e.g. from `git worktree add`

Each case runs twice under callgrind, with 1 and with N+1 operations after the same set-up; the difference over
N is the count per operation (user-space instructions: the kernel's share of a sync is not in it). Background
work is switched off (no flush by count, bytes or time), and the hash seed is fixed, so a count repeats to within
a few hundred instructions. Figures on 2026-11-27 (git 99553fa; in brackets a6886d3, before the save-path
work): savedoc 72,395 (90,943), savedoc with durability="power" 79,509 (105,246), cached readdoc 5,350 (5,335).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(src: str, case: str, n: int, size: int, where: str) -> None:
    """The measured process: set up (the same for every ``n``: ``size`` records made), then ``n`` operations of
    ``case``; exits without closing (no final flush)."""
    sys.path.insert(0, src)
    sys.path.insert(0, str(ROOT / "bench"))
    from local import make_docs  # the records of bench/local.py

    import MyNoSQL

    docs = make_docs(size)
    mode = "power" if case == "savedoc-power" else "process"
    opts = dataclasses.replace(MyNoSQL.Options(durability=mode), flush_docs=10**7, flush_bytes=1 << 40,
                               flush_interval=3600, cache_docs=20000)
    db = MyNoSQL.MyNoSQL(where, options=opts)
    db.opendb("count")
    if case.startswith("savedoc"):
        save = db.savedoc
        for d in docs[:n]:
            save(d)
    else:  # readdoc of records in the record cache, after the two reads that build their decoded memo
        ids = [db.savedoc(d)["id"] for d in docs[:2000]]
        read = db.readdoc
        for _ in range(2):
            for i in ids:
                read(i)
        for k in range(n):
            read(ids[k % len(ids)])
    os._exit(0)


def count(src: str, case: str, n: int, size: int) -> int:
    with tempfile.TemporaryDirectory(prefix="mynosql-instr-") as tmp:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={os.devnull}", sys.executable, __file__,
             "--child", json.dumps([src, case, n, size, tmp])],
            capture_output=True, text=True, timeout=1800, env={**os.environ, "PYTHONHASHSEED": "0"},
        )
    m = re.search(r"Collected : (\d+)", out.stderr)
    if out.returncode != 0 or m is None:
        raise RuntimeError(f"callgrind failed ({out.returncode}): {out.stderr[-2000:]}")
    return int(m.group(1))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default=str(ROOT / "src"), help="the src/ folder to measure (default: this one)")
    ap.add_argument("--n", type=int, default=5000, help="operations per count (default 5000)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(*json.loads(args.child))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    print(f"src: {args.src}; n = {args.n}")
    for case in ("savedoc", "savedoc-power", "readdoc-cached"):
        size = args.n + 2001
        per = (count(args.src, case, args.n + 1, size) - count(args.src, case, 1, size)) / args.n
        print(f"{case:15} {per:9,.0f} instructions per call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
