"""Scale-out: a mirror keeps a CouchDB-protocol server (here PouchDB Server, as a CouchDB cluster would be) in step
both ways with `serve --peer URL`: it pulls the server's changes, and pushes its own (the server does not pull)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from support.mirrors import call, wait_until


def doc_count(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as r:
        return int(json.loads(r.read()).get("doc_count", -1))


def test_a_mirror_and_a_couchdb_server_stay_in_step_both_ways(pouchdb_url: str, mirrors: Any) -> None:
    call("PUT", f"{pouchdb_url}/scale")
    for i in range(10):
        call("PUT", f"{pouchdb_url}/scale/couch-{i}", {"from": "couch", "i": i})
    m = mirrors("scale", peers=[pouchdb_url])
    for i in range(7):
        call("PUT", f"{m.url}/scale/mirror-{i}", {"from": "mirror", "i": i})
    wait_until(lambda: doc_count(f"{m.url}/scale") == 17, timeout=60, what="the server's records on the mirror")
    wait_until(lambda: doc_count(f"{pouchdb_url}/scale") == 17, timeout=60, what="the mirror's records pushed")
    assert call("GET", f"{pouchdb_url}/scale/mirror-3")["from"] == "mirror"
    # and it goes on: an update on either side reaches the other
    doc = call("GET", f"{pouchdb_url}/scale/couch-2")
    call("PUT", f"{pouchdb_url}/scale/couch-2", {**doc, "i": 200})
    wait_until(lambda: call("GET", f"{m.url}/scale/couch-2")["i"] == 200, timeout=60, what="the update pulled")
    mine = call("GET", f"{m.url}/scale/mirror-1")
    call("PUT", f"{m.url}/scale/mirror-1", {**mine, "i": 100})
    wait_until(lambda: call("GET", f"{pouchdb_url}/scale/mirror-1")["i"] == 100, timeout=60,
               what="the update pushed")
