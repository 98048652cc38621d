"""``scripts/demo``: an IoT logger writing readings into a local MyNoSQL database, then what is on disk.

Replication through a failing link joins this demo with the replication work (see the CHANGELOG).
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from pathlib import Path

from ._api import MyNoSQL
from ._options import Options


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="mynosql-demo-"))
    try:
        rnd = random.Random(7)
        n = 20_000
        print(f"MyNoSQL demo: an IoT logger saves {n} sensor readings into a local database at {root}")
        db = MyNoSQL(root, options=Options())
        db.opendb("iot")
        t0 = time.perf_counter()
        ids = []
        for i in range(n):
            rec = db.savedoc({"sensor": f"s-{rnd.randint(1, 40)}", "ts": 1764000000.0 + i * 0.5,
                              "values": [round(rnd.gauss(20, 5), 3) for _ in range(10)], "site": "north-3"})
            ids.append(rec["id"])
        dt = time.perf_counter() - t0
        print(f"  saved {n} records in {dt:.2f} s ({n / dt:,.0f} saves/s), each durable against a process crash")
        first = db.readdoc(ids[0])
        print(f"  read back: {first}")
        upd = db.savedoc({**first, "calibrated": True})
        print(f"  updated:   rev {first['rev'][:10]}... -> {upd['rev'][:10]}...")
        try:
            db.savedoc(first)
        except Exception as exc:  # the stale save is refused, as promised
            print(f"  stale save refused: {type(exc).__name__}: {exc}")
        db.indexadd("sensor")
        by_sensor = db.indexread("sensor")
        print(f"  secondary index 'sensor': {len(by_sensor)} entries, e.g. {ids[1]} -> {by_sensor[ids[1]]!r}")
        db.closedb()
        path = root / "iot"
        total = _size(path)
        print(f"  on disk after close ({total / n:.0f} bytes per record, LZMA blocks in shard files):")
        for p in sorted(path.iterdir()):
            print(f"    {p.name:24} {p.stat().st_size:>10,} bytes")
        db.opendb("iot")
        t0 = time.perf_counter()
        for i in ids:
            db.readdoc(i)
        dt = time.perf_counter() - t0
        print(f"  reopened and read all {n} records in {dt:.2f} s ({n / dt:,.0f} reads/s); verify: "
              f"{db.verify() or 'clean'}")
        db.closedb()
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
