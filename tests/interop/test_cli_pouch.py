"""`mynosql replicate` against a real PouchDB server, both ways (the server of the pouchdb_url fixture)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support.mirrors import ENV, call

import MyNoSQL


def run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "MyNoSQL", *args], capture_output=True, env=ENV, timeout=300)


def test_mynosql_replicate_to_a_pouchdb_server_and_back(tmp_path: Path, pouchdb_url: str) -> None:
    with MyNoSQL.MyNoSQL(tmp_path) as h:
        h.opendb("local")
        recs = {r["id"]: r for r in (h.savedoc({"id": f"r{i:02d}", "i": i, "b": b"\x00\x01"}) for i in range(40))}
        recs["r00"] = h.savedoc({**recs["r00"], "i": 100})
        gone = h.deletedoc("r01", recs.pop("r01")["rev"])
    target = f"{pouchdb_url}/fromcli"
    out = run("replicate", str(tmp_path / "local"), target, "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["errors"] == [] and result["docs_read"] == 40 and result["docs_written"] == 40
    info = call("GET", target)
    assert info["doc_count"] == 39
    assert call("GET", f"{target}/r00")["_rev"] == recs["r00"]["rev"] and call("GET", f"{target}/r00")["i"] == 100
    assert [d["ok"]["_rev"] for d in call("GET", f"{target}/r01?open_revs=all")] == [gone["rev"]]
    # a record made on the PouchDB side comes back with everything else
    made = call("PUT", f"{target}/frompouch", {"v": "made in PouchDB"})
    back = run("replicate", target, str(tmp_path / "back"), "--json")
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout)["docs_written"] == 41
    with MyNoSQL.MyNoSQL(tmp_path) as h:
        h.opendb("back")
        assert h.readdoc("frompouch") == {"id": "frompouch", "rev": made["rev"], "v": "made in PouchDB"}
        assert {r["id"]: r for r in h if r["id"] != "frompouch"} == recs  # same ids, revisions and values
        assert "r01" not in h and h.db.state("r01").winner == gone["rev"]  # type: ignore[union-attr]
    again = run("replicate", target, str(tmp_path / "back"), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["docs_written"] == 0
    missing = run("replicate", f"{pouchdb_url}/nosuchdb", str(tmp_path / "back"), "--json")
    assert missing.returncode == 6 and b"HTTP 404" in missing.stderr
    assert json.loads(missing.stdout)["error"] == "remote"
