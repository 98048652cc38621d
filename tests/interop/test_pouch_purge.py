"""Purge with a real PouchDB (npm, http adapter): a PouchDB app reads a mirror after ``POST /{db}/_purge`` (a
whole document and one conflicting leaf), replicates from it into the database that had them and into a fresh
one, and back: the mirror answers as CouchDB does (see purge.js)."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

from pouch import INTEROP_DIR


def run_purge_app(db_url: str) -> dict[str, Any]:
    node = shutil.which("node")
    assert node is not None
    out = subprocess.run([node, str(INTEROP_DIR / "purge.js"), db_url], cwd=INTEROP_DIR, capture_output=True,
                         text=True, timeout=180, stdin=subprocess.DEVNULL)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ok"], (result, out.stderr[-2000:])
    return result["steps"]  # type: ignore[no-any-return]


def test_a_pouchdb_app_around_a_purge_on_a_mirror(pouch_node_modules: None, mirrors: Any) -> None:
    m = mirrors(None)
    s = run_purge_app(f"{m.url}/pouch_purge")
    assert s["first_pull"] == {"ok": True, "docs_written": 4}  # a, b and c's two leaves
    losing, winning = "2-" + "a" * 32, "2-" + "b" * 32
    assert s["purge"]["status"] == 201
    assert s["purge"]["body"]["purge_seq"] is None
    assert s["purge"]["body"]["purged"] == {"a": s["purge"]["body"]["purged"]["a"], "c": [losing], "nobody": []}
    assert len(s["purge"]["body"]["purged"]["a"]) == 1
    assert s["remote_a"] == 404
    assert s["remote_c"] == {"rev": winning, "conflicts": []}
    assert s["remote_all_docs"] == ["b", "c"] and s["remote_changes"] == ["b", "c"]
    assert s["info"] == {"purge_seq": 2, "doc_count": 2, "update_seq_grew": True}
    assert s["remote_revs_diff"]["a"]["missing"] and s["remote_revs_diff"]["c"]["missing"] == [losing]
    # PouchDB's checkpointed replication goes on past the purge: the old copy keeps what was purged elsewhere
    assert s["second_pull"]["ok"] and s["local_all_docs"] == ["a", "b", "c", "d"]
    assert s["local_c_conflicts"] == [losing]
    assert s["fresh_pull"] == {"ok": True, "docs_written": 3} and s["fresh_all_docs"] == ["b", "c", "d"]
    # pushed from a replica that has them, the purged revisions come back (CouchDB: purge is not replicated)
    assert s["push_back"]["ok"] and s["remote_a_after_push"] and s["remote_c_after_push"] == [losing]
