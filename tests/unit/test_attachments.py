"""Attachments through the Python API and the storage layer: bytes stored once per content, in chunks, compressed
where it helps, garbage-collected by compact, crash-safe; records without attachments unchanged."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import threading
from pathlib import Path

import psutil
import pytest
from support.mirrors import wait_until

import MyNoSQL
from MyNoSQL.errors import AttachmentNotFound, ConflictError, CorruptionError, DocumentNotFound, InvalidDocument
from MyNoSQL.records import attachments as att
from MyNoSQL.records.revtree import DocState
from MyNoSQL.storage.blobs import CHUNK, BlobStore

MB = 1024 * 1024


def md5(data: bytes) -> str:
    return "md5-" + base64.b64encode(hashlib.md5(data).digest()).decode()


def blob_bytes(db: MyNoSQL.MyNoSQL) -> int:
    folder = db.db.path / "attachments"
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and len(p.name) == 64)


def test_put_get_list_delete(db: MyNoSQL.MyNoSQL) -> None:
    r = db.savedoc({"id": "a", "x": 1})
    data = b"hello world\n" * 1000
    rev = db.putattachment("a", "notes/hello.txt", data, "text/plain", r["rev"])
    assert rev.startswith("2-") and rev != r["rev"]
    assert db.getattachment("a", "notes/hello.txt") == data
    assert db.attachments("a") == {"notes/hello.txt": {"content_type": "text/plain", "length": len(data),
                                                       "digest": md5(data), "revpos": 2}}
    assert db.readdoc("a") == {"id": "a", "rev": rev, "x": 1}  # readdoc shows the body only
    with pytest.raises(ConflictError):
        db.putattachment("a", "b.bin", b"x", rev=r["rev"])  # not the current revision
    with pytest.raises(ConflictError):
        db.putattachment("a", "b.bin", b"x")  # the record exists: its rev is needed
    rev3 = db.deleteattachment("a", "notes/hello.txt", rev)
    assert db.attachments("a") == {} and db.readdoc("a")["rev"] == rev3
    with pytest.raises(AttachmentNotFound):
        db.getattachment("a", "notes/hello.txt")
    with pytest.raises(AttachmentNotFound):
        db.deleteattachment("a", "nothing", rev3)
    with pytest.raises(DocumentNotFound):  # no longer a leaf: like its body, not kept
        db.getattachment("a", "notes/hello.txt", rev=rev)


def test_putattachment_creates_a_record(db: MyNoSQL.MyNoSQL) -> None:
    rev = db.putattachment("new", "a.bin", b"\x00\x01", "application/octet-stream")
    assert db.readdoc("new") == {"id": "new", "rev": rev}
    assert db.attachments("new")["a.bin"]["revpos"] == 1
    with pytest.raises(AttachmentNotFound):
        db.getattachment("new", "b.bin")
    with pytest.raises(DocumentNotFound):
        db.getattachment("nobody", "a.bin")


@pytest.mark.parametrize("name", ["", "_x", "a\x00b", "../x", "a/../b", "a//b", "x/", "./a", "é" * 600, 5, None])
def test_bad_names_are_refused_and_nothing_is_written(db: MyNoSQL.MyNoSQL, name: object) -> None:
    with pytest.raises(InvalidDocument):
        db.putattachment("r", name, b"data")  # type: ignore[arg-type]
    assert "r" not in db


def test_savedoc_keeps_attachments_deletedoc_drops_them(db: MyNoSQL.MyNoSQL) -> None:
    rev = db.putattachment("a", "f.txt", b"one", "text/plain")
    saved = db.savedoc({"id": "a", "rev": rev, "v": 2})
    assert db.attachments("a")["f.txt"]["revpos"] == 1 and db.getattachment("a", "f.txt") == b"one"
    assert db.savedoc({"id": "a", "rev": saved["rev"], "v": 2})["rev"] == saved["rev"]  # unchanged: same rev
    gone = db.deletedoc("a", saved["rev"])
    with pytest.raises(DocumentNotFound):
        db.attachments("a")
    again = db.savedoc({"id": "a", "v": 3})  # re-created: a new life without attachments
    assert again["rev"].startswith("4-") and db.attachments("a") == {} and gone["rev"].startswith("3-")


def test_revision_ids_depend_on_attachments_and_are_the_same_on_two_nodes(tmp_path: Path) -> None:
    revs = []
    for where in ("n1", "n2"):
        with MyNoSQL.MyNoSQL(tmp_path / where) as h:
            h.opendb("db")
            r = h.savedoc({"id": "x", "v": 1})
            revs.append((r["rev"], h.putattachment("x", "a", b"bytes", "text/plain", r["rev"])))
    assert revs[0] == revs[1] and revs[0][0] != revs[0][1]


def test_records_without_attachments_are_encoded_as_before() -> None:
    s = DocState("id", 7, {"1-" + "a" * 32: (None, False)}, {"1-" + "a" * 32: b'{"v":1}'})
    raw = s.to_bytes()
    assert raw[4:].startswith(b'["id",7,[["1-' + b"a" * 32 + b'",-1,0]],[[0,7]]]')
    back = DocState.from_bytes(raw)
    assert back.atts is None and back.bodies == s.bodies
    meta = {"content_type": "text/plain", "digest": "md5-x", "length": 3, "revpos": 1, "blob": "0" * 64}
    s2 = DocState("id", 7, s.tree, s.bodies, {"1-" + "a" * 32: {"f": meta}})
    assert DocState.from_bytes(s2.to_bytes()).atts == s2.atts


def test_the_same_bytes_in_1000_records_take_their_space_once(db: MyNoSQL.MyNoSQL) -> None:
    photo = os.urandom(MB)
    for i in range(1000):
        db.putattachment(f"r{i:04}", "photo.jpg", photo, "image/jpeg")
    db.db.flush()
    assert MB <= blob_bytes(db) <= MB + 64 * 1024, blob_bytes(db)
    assert db.getattachment("r0999", "photo.jpg") == photo
    assert len(list((db.db.path / "attachments").glob("??/*"))) == 1


def test_compressible_bytes_are_compressed_jpeg_is_not(db: MyNoSQL.MyNoSQL) -> None:
    text = b"".join(b"line %d of a log that repeats itself\n" % i for i in range(40_000))
    db.putattachment("t", "log.txt", text, "text/plain")
    assert blob_bytes(db) < len(text) // 3
    assert db.getattachment("t", "log.txt") == text
    before = blob_bytes(db)
    db.putattachment("j", "same-bytes.jpg", text + b"!", "image/jpeg")  # a JPEG is never tried
    assert blob_bytes(db) - before >= len(text)
    noise = os.urandom(3 * CHUNK)
    before = blob_bytes(db)
    db.putattachment("n", "noise.bin", noise, "application/octet-stream")  # tried on the first chunk: no gain
    assert len(noise) <= blob_bytes(db) - before <= len(noise) + 4096
    assert db.getattachment("n", "noise.bin") == noise


def test_openattachment_reads_chunks_and_seeks(db: MyNoSQL.MyNoSQL) -> None:
    data = os.urandom(3 * CHUNK + 12345)
    db.putattachment("s", "big.bin", io.BytesIO(data))
    with db.openattachment("s", "big.bin") as f:
        assert f.length == len(data) and f.content_type == "application/octet-stream" and f.digest == md5(data)
        assert f.read(10) == data[:10]
        f.seek(2 * CHUNK - 5)
        assert f.read(10) == data[2 * CHUNK - 5 : 2 * CHUNK + 5]
        f.seek(-7, io.SEEK_END)
        assert f.read() == data[-7:]
        f.seek(0)
        assert f.read() == data
        buf = bytearray(100)
        f.seek(CHUNK - 50)
        assert f.readinto(buf) == 50 and bytes(buf[:50]) == data[CHUNK - 50 : CHUNK]


def test_a_file_object_opened_in_text_mode_is_refused(db: MyNoSQL.MyNoSQL, tmp_path: Path) -> None:
    p = tmp_path / "t.txt"
    p.write_text("hello")
    with open(p) as f, pytest.raises(InvalidDocument):
        db.putattachment("x", "t.txt", f)  # type: ignore[arg-type]
    with pytest.raises(InvalidDocument):
        db.putattachment("x", "t.txt", "a str")  # type: ignore[arg-type]
    assert "x" not in db and not list((db.db.path / "attachments").glob("??/*"))


def test_compaction_collects_bytes_of_revisions_that_are_no_longer_leaves(db: MyNoSQL.MyNoSQL) -> None:
    one, two, three = os.urandom(5000), os.urandom(6000), os.urandom(7000)
    rev = db.putattachment("a", "f", one)
    rev = db.putattachment("a", "f", two, rev=rev)  # replaces: `one` is now only in a non-leaf revision
    rev = db.putattachment("a", "g", three, rev=rev)
    assert blob_bytes(db) >= 18000
    db.compact()
    assert 13000 <= blob_bytes(db) < 14000  # two and three stay: the leaf refers to them
    assert db.getattachment("a", "f") == two
    db.deletedoc("a", rev)
    db.compact()
    assert blob_bytes(db) == 0


def test_a_conflicting_leaf_keeps_its_attachment_through_compaction(db: MyNoSQL.MyNoSQL) -> None:
    d = db.db
    data = os.urandom(4000)
    rev = db.putattachment("c", "f", data)
    state = d.state("c")
    assert state is not None
    meta = state.leaf_atts(rev)["f"]
    # an edit that keeps the attachment (a stub: the bytes are here) and a concurrent one that drops it, and wins
    d.put_replicated("c", ["2-" + "0" * 32, rev], False, b'{"v":3}', {"f": att.Stub(meta["digest"], 1, None, None)})
    other = "2-" + "f" * 32
    d.put_replicated("c", [other, rev], False, b'{"v":2}')
    assert d.state("c").winner == other and db.attachments("c") == {}  # type: ignore[union-attr]
    db.compact()
    assert db.getattachment("c", "f", rev="2-" + "0" * 32) == data
    assert db.conflicts("c") == ["2-" + "0" * 32]
    merged = db.resolve("c", {"v": 4})
    assert db.attachments("c") == {} and merged["rev"].startswith("3-")
    db.compact()
    assert blob_bytes(db) == 0


def test_replicated_stubs_resolve_against_the_record_or_fail(db: MyNoSQL.MyNoSQL) -> None:
    d = db.db
    data = b"payload"
    r1 = "1-" + "a" * 32
    d.put_replicated("r", [r1], False, b"{}", {"p": att.Inline("text/plain", data, md5(data), 1)})
    assert db.getattachment("r", "p") == data
    r2 = "2-" + "b" * 32
    d.put_replicated("r", [r2, r1], False, b'{"v":2}', {"p": att.Stub(md5(data), 1, "text/plain", len(data))})
    assert db.getattachment("r", "p") == data and db.attachments("r")["p"]["revpos"] == 1
    with pytest.raises(att.MissingStub):
        d.put_replicated("q", [r1], False, b"{}", {"p": att.Stub(md5(data), 1, "text/plain", 7)})
    assert "q" not in db
    # a Peer keeps a stub whose bytes it does not have; reading them needs a mirror
    d.put_replicated("q", [r1], False, b"{}", {"p": att.Stub(md5(b"elsewhere"), 1, "text/plain", 9)}, lazy=True)
    assert db.attachments("q")["p"]["length"] == 9
    with pytest.raises(MyNoSQL.DocumentUnavailable):
        db.getattachment("q", "p")


def test_a_crash_between_the_blob_and_its_record_leaves_no_orphan(tmp_path: Path) -> None:
    h = MyNoSQL.MyNoSQL(tmp_path)
    d = h.opendb("db")
    kept = h.putattachment("kept", "a", b"kept bytes")
    blobs = d._store.blobs
    info = blobs.put(b"orphan bytes", "lost")  # the process dies before the record is written
    w = blobs.writer()
    w.write(b"half a blob")  # and in the middle of another one
    orphan = blobs.path(info.key)
    assert orphan.is_file() and list((blobs.dir / "tmp").iterdir())
    d._store.wal.close()  # no flush, no clean close: as after a kill
    d._lock.release()
    d._closed = True
    h._db = None
    h2 = MyNoSQL.MyNoSQL(tmp_path)
    h2.opendb("db")
    try:
        assert not list((blobs.dir / "tmp").iterdir())
        # the compactor deletes it once it made sure no record refers to it
        wait_until(lambda: not orphan.exists(), timeout=10, what="the orphan blob deleted")
        assert h2.getattachment("kept", "a") == b"kept bytes" and h2.readdoc("kept")["rev"] == kept
        assert h2.verify() == []
    finally:
        h2.closedb()


def test_damaged_bytes_are_detected(db: MyNoSQL.MyNoSQL) -> None:
    data = os.urandom(2 * CHUNK)
    db.putattachment("d", "x", data)
    [path] = (db.db.path / "attachments").glob("??/*")
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with db.openattachment("d", "x") as f:
        assert f.read(CHUNK) == data[:CHUNK]
        with pytest.raises(CorruptionError):
            f.read()
    path.unlink()
    db.db.flush()
    assert any("attachment 'x' are missing" in p for p in db.verify())


def test_blob_store_never_deletes_what_a_writer_holds(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "attachments")
    a = store.put(b"a" * 100, "r1")
    b = store.put(b"b" * 100, "r2")
    store.release(b.key, 5)
    size = store.path(b.key).stat().st_size
    assert store.collect(lambda: set()) == (0, 0)  # b's record is not in a shard yet: kept for now
    store.flushed(5)
    assert store.collect(lambda: set()) == (1, size)
    assert store.has(a.key)  # pinned: kept
    assert not store.has(b.key)
    store.release(a.key, None)  # its record was never written, and nothing else uses it: gone at once
    assert not store.has(a.key)
    c = store.put(b"c" * 100, "r3")
    again = store.put(b"c" * 100, "r4")  # the same bytes: not written twice
    assert again.key == c.key and not again.new and c.new
    store.release(c.key, None)  # one writer failed, the other still holds it
    assert store.has(c.key)
    store.release(again.key, 9)
    store.flushed(9)
    assert store.has(c.key) and (store.dir / "pending").stat().st_size == 0
    store.close()


@pytest.mark.slow
def test_a_50_mb_attachment_streams_in_bounded_memory(db: MyNoSQL.MyNoSQL) -> None:
    size = 50 * MB
    proc = psutil.Process()

    class Source(io.RawIOBase):  # 50 MB that never exist whole in RAM
        def __init__(self) -> None:
            self.left = size
            self.h = hashlib.md5()

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            n = min(self.left, n if n > 0 else CHUNK)
            out = os.urandom(n)
            self.left -= n
            self.h.update(out)
            return out

    peak = [proc.memory_info().rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            peak[0] = max(peak[0], proc.memory_info().rss)

    base = proc.memory_info().rss
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        src = Source()
        db.putattachment("big", "video.bin", src, "video/mp4")  # type: ignore[arg-type]
        h = hashlib.md5()
        with db.openattachment("big", "video.bin") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
    finally:
        stop.set()
        t.join()
    assert h.digest() == src.h.digest()
    assert db.attachments("big")["video.bin"]["length"] == size
    assert peak[0] - base < 20 * MB, (peak[0] - base) / MB


def test_the_pending_journal_stays_short_under_constant_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("MyNoSQL.storage.blobs.JOURNAL_REWRITE", 500)
    store = BlobStore(tmp_path / "attachments")
    held = store.put(b"still being written", "slow-writer")  # its record is not written yet
    for i in range(20):
        info = store.put(b"blob %d" % i, f"r{i}")
        store.release(info.key, i + 1)
        store.flushed(i + 1)
    journal = (store.dir / "pending").read_bytes()
    assert len(journal) <= 500 and held.key.encode() in journal and journal.count(b"\n") <= 5
    store.release(held.key, 30)
    store.flushed(30)
    assert (store.dir / "pending").stat().st_size == 0
    store.close()


def test_a_replicated_stub_finds_bytes_no_leaf_has_any_more_until_compact(db: MyNoSQL.MyNoSQL) -> None:
    """A Peer that held only the stub of an attachment edits the record from revision 1 while another writer
    replaced that attachment here: its revision 2 comes with a stub whose bytes no leaf here has. They are still
    on disk (compact() has not collected them): found by digest. After compact(), CouchDB's missing_stub."""
    d = db.db
    old, new = b"the first notes\n" * 30, b"the second notes\n" * 30
    r1 = db.putattachment("r", "notes.txt", old, "text/plain")
    db.putattachment("r", "notes.txt", new, "text/plain", r1)  # the leaf now holds the new bytes only
    # a stub whose length says other bytes is no match
    with pytest.raises(att.MissingStub):
        d.put_replicated("r", ["2-" + "d" * 32, r1], False, b"{}", {"notes.txt": att.Stub(md5(old), 1, None, 3)})
    theirs = "2-" + "c" * 32
    assert d.put_replicated("r", [theirs, r1], False, b'{"title":"edited offline"}',
                            {"notes.txt": att.Stub(md5(old), 1, "text/plain", len(old))})
    assert db.getattachment("r", "notes.txt", rev=theirs) == old
    assert d.attachments("r", rev=theirs)["notes.txt"]["revpos"] == 1
    # the bytes are kept while a leaf refers to them, found again after a reopen
    db.closedb()
    db.opendb("testdb")
    d = db.db
    assert d.put_replicated("r", ["2-" + "e" * 32, r1], False, b"{}",
                            {"notes.txt": att.Stub(md5(old), 1, "text/plain", len(old))})
    # once no leaf refers to them, compact() collects them: then a stub naming them is missing_stub
    for rev in ("2-" + "c" * 32, "2-" + "e" * 32):
        d.purge("r", [rev])
    db.compact()
    with pytest.raises(att.MissingStub):
        d.put_replicated("r", ["2-" + "f" * 32, r1], False, b"{}",
                         {"notes.txt": att.Stub(md5(old), 1, "text/plain", len(old))})
    assert db.getattachment("r", "notes.txt") == new


def test_recovery_keeps_a_blob_another_record_reuses_and_removes_true_orphans(location: Path) -> None:
    """Regression (chaos seed 95021): recovery deleted a blob whose ``pending`` journal line named only a record that
    no longer referred to it, while another record, which had re-used the same bytes (no line of its own), did: its
    attachment's bytes were gone. Lines outlive their blob's flush (the journal is rewritten only when it grows
    long), so a crash can leave such a line. Recovery now only suspects; the compactor deletes a suspect no record
    refers to."""
    photo = b"the same photo" * 1000
    db = MyNoSQL.MyNoSQL(location)
    db.opendb("testdb")
    rev3 = db.putattachment("r3", "p.jpg", photo, "image/jpeg")
    db.putattachment("r7", "p.jpg", photo, "image/jpeg")  # the same bytes: the same blob
    db.deleteattachment("r3", "p.jpg", rev3)  # r7 alone refers to it now
    [(key, path)] = [(p.name, p) for p in (db.db.path / "attachments").glob("??/*")]
    journal = db.db.path / "attachments" / "pending"
    db.closedb()
    # what a crash can leave: the blob's line for the record it was first written for (r3), and a blob whose
    # record was never written (r5: the crash came between the two)
    orphans = BlobStore(location / "testdb" / "attachments")
    orphan = orphans.put(b"never referred to", "r5")
    orphans.close()
    with journal.open("ab") as f:
        f.write(key.encode() + b" " + b"r3".hex().encode() + b"\n")
    assert orphans.has(orphan.key)
    db = MyNoSQL.MyNoSQL(location, options=MyNoSQL.Options(flush_interval=0.05))
    db.opendb("testdb")
    try:
        assert db.getattachment("r7", "p.jpg") == photo
        wait_until(lambda: not orphans.has(orphan.key), timeout=10, what="the true orphan deleted")
        assert path.is_file() and db.getattachment("r7", "p.jpg") == photo
        assert db.verify() == []
    finally:
        db.closedb()
