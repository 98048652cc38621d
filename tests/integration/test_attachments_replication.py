"""Attachments through MyNoSQL's own replication, with real mirror processes on 127.0.0.1 and peers in this
process: a peer pushes the attachments it adds; another reads the record (stubs only) and fetches the bytes when
it reads them; unchanged attachments of a new revision travel as stubs; mirrors pull them from each other; the
one-shot push and pull carry them."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.mirrors import MirrorProcess, free_port, wait_until

import MyNoSQL

FAST = MyNoSQL.Options(flush_docs=200, remote_timeout=5.0, read_timeout=3.0, longpoll=5.0, final_push=5.0)
MB = 1024 * 1024


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()  # type: ignore[no-any-return]


def mirror_att(m: MirrorProcess, id: str, name: str, db: str | None = None) -> bytes | None:
    try:
        return get(f"{m.url}/{db or m.name}/{id}/{name}")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def put(url: str, data: bytes) -> None:
    req = urllib.request.Request(url, data=data, method="PUT", headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()


def blobs(h: MyNoSQL.MyNoSQL) -> int:
    return len(list((h.db.path / "attachments").glob("??/*")))


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Callable[..., MyNoSQL.MyNoSQL]]:
    opened: list[MyNoSQL.MyNoSQL] = []

    def make(tag: str, options: MyNoSQL.Options = FAST) -> MyNoSQL.MyNoSQL:
        h = MyNoSQL.MyNoSQL(tmp_path / tag, options=options)
        h.opendb("db")
        opened.append(h)
        return h

    yield make
    for h in opened:
        h.closedb()


@pytest.mark.slow
def test_peers_push_attachments_and_fetch_bytes_when_read(mirrors: Any, peers: Any) -> None:
    m = mirrors()
    a, b = peers("a"), peers("b")
    a.addpeer(m.url)
    b.addpeer(m.url)
    small, big = b"a small note\n" * 100, os.urandom(3 * MB)  # inline in _bulk_docs / a multipart PUT
    r = a.savedoc({"id": "rec", "title": "holiday"})
    rev = a.putattachment("rec", "note.txt", small, "text/plain", r["rev"])
    rev = a.putattachment("rec", "photos/beach.jpg", big, "image/jpeg", rev)
    wait_until(lambda: mirror_att(m, "rec", "photos/beach.jpg") == big, what="the photo on the mirror")
    assert mirror_att(m, "rec", "note.txt") == small
    # b reads the record: it comes with stubs; the bytes come when b reads them
    assert b.readdoc("rec")["title"] == "holiday"
    assert b.attachments("rec")["photos/beach.jpg"]["length"] == len(big) and blobs(b) == 0
    assert b.getattachment("rec", "photos/beach.jpg") == big
    assert blobs(b) == 1
    with b.openattachment("rec", "note.txt") as f:
        assert f.read() == small
    # b edits the record: the new revision reaches the mirror and a with stubs (no bytes travel again)
    b_rev = b.savedoc({**b.readdoc("rec"), "title": "holiday 2026"})["rev"]
    wait_until(lambda: json.loads(get(f"{m.url}/db/rec"))["_rev"] == b_rev, what="b's edit on the mirror")
    wait_until(lambda: a.readdoc("rec")["title"] == "holiday 2026", what="b's edit on a")
    assert a.getattachment("rec", "photos/beach.jpg") == big and blobs(a) == 2
    assert mirror_att(m, "rec", "photos/beach.jpg") == big
    # b adds an attachment to a record it read: its bytes go to the mirror, the photo's do not go again
    added = os.urandom(200_000)
    b.putattachment("rec", "added.bin", added, rev=b_rev)
    wait_until(lambda: mirror_att(m, "rec", "added.bin") == added, what="b's attachment on the mirror")
    wait_until(lambda: a.attachments("rec").keys() == {"note.txt", "photos/beach.jpg", "added.bin"},
               what="the new attachment's stub on a")
    assert a.getattachment("rec", "added.bin") == added


def test_a_peer_without_its_mirror_cannot_read_missing_bytes(mirrors: Any, peers: Any) -> None:
    m = mirrors()
    a, b = peers("a"), peers("b")
    a.addpeer(m.url)
    b.addpeer(m.url)
    a.putattachment("r", "f.bin", b"bytes of r")
    wait_until(lambda: mirror_att(m, "r", "f.bin") == b"bytes of r", what="the attachment on the mirror")
    assert b.attachments("r")["f.bin"]["length"] == 10
    m.kill()
    with pytest.raises(MyNoSQL.DocumentUnavailable) as err:
        b.getattachment("r", "f.bin")
    assert "f.bin" in str(err.value)
    assert a.getattachment("r", "f.bin") == b"bytes of r"  # a has them


@pytest.mark.slow
def test_mirrors_pull_attachments_from_each_other(mirrors: Any) -> None:
    p1, p2 = free_port(), free_port()
    m1 = mirrors(tag="m1", port=p1, peers=[f"http://127.0.0.1:{p2}"])
    m2 = mirrors(tag="m2", port=p2, peers=[m1.url])
    data = os.urandom(2 * MB)
    put(f"{m1.url}/db/doc/video.bin", data)
    wait_until(lambda: mirror_att(m2, "doc", "video.bin") == data, timeout=60, what="the bytes on the second mirror")
    rev = json.loads(get(f"{m2.url}/db/doc"))["_rev"]
    put(f"{m2.url}/db/doc/more.txt?rev={rev}", b"added on m2")
    wait_until(lambda: mirror_att(m1, "doc", "more.txt") == b"added on m2", timeout=60, what="m2's bytes on m1")
    assert mirror_att(m1, "doc", "video.bin") == data


@pytest.mark.slow
def test_one_shot_push_and_pull_carry_attachments(mirrors: Any, peers: Any, tmp_path: Path) -> None:
    m = mirrors()
    local = peers("local", MyNoSQL.Options(background_sync=False))
    photo = os.urandom(MB)
    for i in range(20):  # the same photo in 20 records, and one of their own each
        rev = local.putattachment(f"r{i}", "photo.jpg", photo, "image/jpeg")
        local.putattachment(f"r{i}", "own.txt", f"record {i}".encode(), "text/plain", rev)
    res = local.push(m.url)
    assert res["docs_written"] == 20 and not res["errors"], res
    assert mirror_att(m, "r7", "own.txt") == b"record 7" and mirror_att(m, "r19", "photo.jpg") == photo
    fresh = peers("fresh", MyNoSQL.Options(background_sync=False))
    res = fresh.pull(m.url)
    assert res["docs_written"] == 20 and not res["errors"], res
    assert fresh.getattachment("r3", "photo.jpg") == photo and fresh.getattachment("r3", "own.txt") == b"record 3"
    assert blobs(fresh) == 21  # the photo once, and each record's own text
    assert local.push(m.url)["docs_written"] == 0  # in step: nothing travels again


def test_a_replica_in_step_gets_no_attachment_bytes_again(mirrors: Any, peers: Any) -> None:
    """A source without a checkpoint with the mirror (a peer that pulled the records, a failover, a one-shot
    replication) whose revisions the mirror already holds sends nothing again: not even the revisions whose
    attachments are new in them (revpos = their generation), which a small batch to a MyNoSQL mirror used to send
    whole, bytes and all, without asking ``_revs_diff`` (found by the chaos runner: --seed 60001 --attachments)."""
    from MyNoSQL.testing import FaultProxy

    m = mirrors()
    local = peers("local", MyNoSQL.Options(background_sync=False))
    for i in range(5):
        local.putattachment(f"r{i}", "photo.jpg", os.urandom(100_000), "image/jpeg")
    assert local.push(m.url)["docs_written"] == 5
    fresh = peers("fresh", MyNoSQL.Options(background_sync=False))
    assert fresh.pull(m.url)["docs_written"] == 5
    proxy = FaultProxy("127.0.0.1", m.port).start()
    try:
        res = fresh.push(proxy.url)
        sent = proxy.stats().bytes_client_to_server
    finally:
        proxy.stop()
    assert res["docs_written"] == 0 and not res["errors"], res
    assert sent < 20_000, f"{sent} bytes sent to a mirror that holds every revision"


def test_every_leaf_of_a_record_with_attachments_is_pushed(mirrors: Any, peers: Any) -> None:
    """A record with two conflicting leaves, both with attachments, one of them on the mirror already: the other
    one travels. A small batch asks ``_revs_diff`` about its documents with attachments; it asked about one
    revision per record and dropped the record's other leaves with it, and its checkpoint then moved past
    them: a lost write (chaos seed 60006 with --dbs 3 --attachments: a peer's acknowledged revision, pushed,
    never reached either mirror)."""
    m = mirrors()
    first = peers("first", MyNoSQL.Options(background_sync=False))
    second = peers("second", MyNoSQL.Options(background_sync=False))
    ids = [f"r{i}" for i in range(8)]
    for id in ids:  # generation 2, its attachment from generation 1 (the case the old code asked about too)
        for h in (first, second):
            rev = h.putattachment(id, "a.bin", f"{id} of {h.db.path.parent.name}".encode(), "text/plain")
            h.savedoc({"id": id, "rev": rev, "v": 2})
    assert first.push(m.url)["docs_written"] == len(ids)
    assert second.pull(m.url)["docs_written"] == len(ids)  # now each record has both leaves on `second`
    leaves = {id: {second.readdoc(id)["rev"], *second.conflicts(id)} for id in ids}
    assert all(len(revs) == 2 for revs in leaves.values())
    res = second.push(m.url)
    assert not res["errors"], res
    for id in ids:
        doc = json.loads(get(f"{m.url}/db/{id}?conflicts=true"))
        assert {doc["_rev"], *doc.get("_conflicts", [])} == leaves[id], id


def test_a_peer_edit_keeping_bytes_it_never_read_reaches_a_mirror_that_replaced_them(mirrors: Any,
                                                                                      peers: Any) -> None:
    """A Peer holds only the stub of an attachment it never read. Offline, it edits the record while another
    writer replaces that attachment on the mirror, so no leaf there has the old bytes any more and the Peer can
    fetch them from no revision. Its acknowledged revision must still reach the mirror (a conflict, with the old
    bytes): it travels with a stub, and the mirror finds the bytes by digest. Found by the chaos runner (--seed
    60335 --dbs 3 --attachments): the Peer retried for ever and the write never arrived."""
    m = mirrors()
    writer = peers("writer", MyNoSQL.Options(background_sync=False))
    old, new = b"the first notes\n" * 40, b"the second notes\n" * 40
    r1 = writer.putattachment("r", "notes.txt", old, "text/plain")
    assert writer.push(m.url)["docs_written"] == 1
    reader = peers("reader")
    reader.addpeer(m.url)
    assert reader.readdoc("r")["rev"] == r1 and blobs(reader) == 0  # read through: the stub only
    where = reader.db.path.parent
    reader.closedb()
    r2 = writer.putattachment("r", "notes.txt", new, "text/plain", r1)
    assert writer.push(m.url)["docs_written"] == 1 and mirror_att(m, "r", "notes.txt") == new
    with MyNoSQL.MyNoSQL(where, options=MyNoSQL.Options(background_sync=False)) as offline:
        offline.opendb("db")
        mine = offline.savedoc({**offline.readdoc("r"), "title": "edited offline"})["rev"]
    assert mine.startswith("2-")
    back = peers("reader")  # online again: its background push sends the edit

    def leaves() -> set[str]:
        doc = json.loads(get(f"{m.url}/db/r?conflicts=true"))
        return {doc["_rev"], *doc.get("_conflicts", [])}

    wait_until(lambda: mine in leaves(), timeout=60, what="the peer's revision on the mirror")
    assert leaves() == {r2, mine}
    assert mirror_att(m, "r", f"notes.txt?rev={mine}") == old and mirror_att(m, "r", f"notes.txt?rev={r2}") == new
    assert back.getattachment("r", "notes.txt", rev=mine) == old  # and the peer can read them now
