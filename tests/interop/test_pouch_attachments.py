"""Attachments with a real PouchDB (npm, http adapter): an app puts, reads and removes them on a mirror, replicates
the mirror's database into a local PouchDB and back; PouchDB's replicator copies them between a mirror and
express-pouchdb, both ways; MyNoSQL's replicator pushes them to express-pouchdb and pulls them back. Every
attachment's bytes are checked where they land."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from pouch import INTEROP_DIR, pouch_replicate
from support.mirrors import call

import MyNoSQL

pytestmark = pytest.mark.slow


def fetch(url: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read(), r.headers.get("Content-Type", "")


def att_url(db_url: str, id: str, name: str) -> str:
    if id.startswith("_design/"):
        doc = "_design/" + urllib.parse.quote(id[8:], safe="")
    else:
        doc = urllib.parse.quote(id, safe="")
    return f"{db_url}/{doc}/" + "/".join(urllib.parse.quote(p, safe="") for p in name.split("/"))


def run_pouch_app(db_url: str) -> dict[str, Any]:
    node = shutil.which("node")
    assert node is not None
    out = subprocess.run([node, str(INTEROP_DIR / "attachments.js"), db_url], cwd=INTEROP_DIR, capture_output=True,
                         text=True, timeout=240, stdin=subprocess.DEVNULL)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ok"], (result, out.stderr[-2000:])
    return result


def check_bytes(db_url: str, sums: dict[str, str]) -> None:
    for key, want in sums.items():
        id, name = ("_design/app", key[len("_design/app/"):]) if key.startswith("_design/") else key.split("/", 1)
        data, _ = fetch(att_url(db_url, id, name))
        assert hashlib.md5(data).hexdigest() == want, key


def test_a_pouchdb_app_puts_reads_and_replicates_attachments_with_a_mirror(pouch_node_modules: None,
                                                                         mirrors: Any) -> None:
    m = mirrors(None)
    db_url = f"{m.url}/pouch_atts"
    result = run_pouch_app(db_url)
    s = result["steps"]
    assert s["rev_generations"] == ["1", "2"]
    assert s["stubs"]["photos/2026/cat.jpg"] == {"content_type": "image/jpeg", "revpos": 2, "length": 307200,
                                                 "digest": s["stubs"]["photos/2026/cat.jpg"]["digest"], "stub": True}
    assert s["binary_roundtrip"] and s["full_roundtrip"] and s["digest_matches_pouch"]
    assert s["design_attachment"] == "<h1>hi</h1>" and s["local_design"] == "<h1>hi</h1>"
    assert s["after_remove"] is None and s["removed_rev_generation"] == "2" and s["missing_attachment"] == 404
    assert s["pulled"] == {"ok": True, "docs_written": 3} and s["local_cat"]
    assert s["pushed"] == {"ok": True, "docs_written": 2, "doc_write_failures": 0}
    assert s["remote_note_atts"] == ["added-locally.bin", "note.txt", "photos/2026/cat.jpg"] and s["remote_added"]
    check_bytes(db_url, result["md5"])
    doc = call("GET", f"{db_url}/from-local")
    assert doc["n"] == 1 and sorted(doc["_attachments"]) == ["a.txt", "b/c.bin"]
    assert all(a["stub"] for a in doc["_attachments"].values())


def test_pouchdb_replicator_copies_attachments_between_a_mirror_and_express_pouchdb(pouch_node_modules: None,
                                                                                   pouchdb_url: str,
                                                                                   mirrors: Any) -> None:
    m = mirrors(None)
    source = f"{m.url}/att_src"
    result = run_pouch_app(source)  # fills the mirror's database
    # mirror -> express-pouchdb, by PouchDB's replicator
    there = f"{pouchdb_url}/att_copy"
    res = pouch_replicate(source, there, timeout=120)
    assert res["ok"] and res["doc_write_failures"] == 0, res
    check_bytes(there, result["md5"])
    # express-pouchdb -> a new mirror database (PouchDB's replicator pushing _bulk_docs with base64 data)
    back = f"{m.url}/att_back"
    res = pouch_replicate(there, back, timeout=120)
    assert res["ok"] and res["doc_write_failures"] == 0 and res["docs_written"] == 4, res
    check_bytes(back, result["md5"])
    def shape(url: str) -> dict[str, Any]:  # revpos is PouchDB's to set: it re-counts it on every write it takes
        return {n: (a["digest"], a["length"], a["content_type"]) for n, a in call("GET", url)["_attachments"].items()}

    assert shape(f"{back}/note") == shape(f"{source}/note")


def test_our_replicator_carries_attachments_to_and_from_express_pouchdb(pouchdb_url: str, tmp_path: Path) -> None:
    big, small = os.urandom(2 * 1024 * 1024), b"tiny"
    with MyNoSQL.MyNoSQL(tmp_path / "a", options=MyNoSQL.Options(background_sync=False)) as local:
        local.opendb("ours")
        rev = local.putattachment("a", "big.bin", big)  # a multipart/related PUT
        local.putattachment("a", "dir/small.txt", small, "text/plain", rev)  # inline in _bulk_docs
        local.putattachment("_design/x", "index.html", b"<p>", "text/html")
        res = local.push(pouchdb_url)
        assert res["docs_written"] == 2 and not res["errors"], res
    assert fetch(f"{pouchdb_url}/ours/a/big.bin")[0] == big
    assert fetch(f"{pouchdb_url}/ours/a/dir/small.txt") == (small, "text/plain")
    with MyNoSQL.MyNoSQL(tmp_path / "b", options=MyNoSQL.Options(background_sync=False)) as other:
        other.opendb("ours")
        res = other.pull(pouchdb_url)
        assert res["docs_written"] == 2 and not res["errors"], res
        assert other.getattachment("a", "big.bin") == big and other.getattachment("_design/x", "index.html") == b"<p>"
        assert other.attachments("a")["dir/small.txt"]["digest"] == "md5-" + base64.b64encode(
            hashlib.md5(small).digest()).decode()
