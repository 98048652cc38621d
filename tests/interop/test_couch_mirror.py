"""A real PouchDB (npm, http adapter) uses a mirror as a CouchDB server: it creates, lists, reads, follows and
destroys databases there, stores a design document, and replicates into a database it creates."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

from pouch import INTEROP_DIR


def pouch_client(url: str) -> dict[str, Any]:
    node = shutil.which("node")
    assert node is not None
    out = subprocess.run([node, str(INTEROP_DIR / "couch_client.js"), url], cwd=INTEROP_DIR, capture_output=True,
                         text=True, timeout=180, stdin=subprocess.DEVNULL)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ok"], (result, out.stderr[-2000:])
    steps: dict[str, Any] = result["steps"]
    return steps


def test_pouchdb_uses_a_mirror_as_a_couchdb_server(pouch_node_modules: None, mirrors: Any) -> None:
    m = mirrors(None)  # every database of the folder: PouchDB creates its own
    s = pouch_client(m.url)
    assert s["info"]["doc_count"] == 0 and s["info"]["db_name"].startswith("pouch_client_")
    assert [r["ok"] for r in s["bulk"]] == [True] * 10 and s["posted_id_length"] == 32
    assert s["all"]["total_rows"] == 11 and len(s["all"]["rows"]) == 11
    assert all("doc" in r and r["doc"]["_id"] == r["id"] for r in s["all"]["rows"])
    assert [r.get("id") or r["error"] for r in s["keys"]["rows"]] == ["doc03", "not_found", "doc01"]
    assert [r["id"] for r in s["range"]["rows"]] == ["doc02", "doc03", "doc04"]  # inclusive_end=false
    # rows before doc02: doc00, doc01, and the posted record if its random id sorts first (hex: 0-9, a-d...)
    assert s["range"]["offset"] == 2 + (s["posted_id"] < "doc02")
    # the posted record's random hex id sorts after doc09 when it starts with e or f
    newest = sorted([f"doc{i:02d}" for i in range(10)] + [s["posted_id"]], reverse=True)[:2]
    assert [r["id"] for r in s["descending"]["rows"]] == newest
    changed = {r["id"]: r for r in s["changes"]["results"]}
    assert set(changed) == {"doc04", "doc05"} and changed["doc04"]["doc"]["n"] == 40
    assert changed["doc05"]["deleted"] is True and changed["doc05"]["doc"]["_deleted"] is True
    assert [r["id"] for r in s["changes_desc"]["results"]] == ["doc05"]  # the newest change first
    assert [i["status"] for i in s["revs_info"]["_revs_info"]] == ["available", "missing"]
    assert s["design"]["ok"] and s["design_doc"]["views"]["by_n"]["map"].startswith("function")
    assert s["view"] == {"status": 501, "name": "not_implemented"}  # no JavaScript runs here
    assert s["replicated"] == {"ok": True, "docs_written": 12}  # 10 + the posted one + the design document
    assert s["copy_info"]["doc_count"] == 11 and s["copy_info"]["doc_del_count"] == 1
    assert s["final_info"]["doc_count"] == 11
    assert s["after_destroy"] == "not_found"
