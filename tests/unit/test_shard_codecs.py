"""Shard block codecs: LZMA2 (the default; DEFLATE while the compactor is behind), DEFLATE (``codec="deflate"``), and
blocks written before codecs were tagged."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest
from support.mirrors import wait_until

import MyNoSQL
from MyNoSQL.errors import CorruptionError
from MyNoSQL.storage import index as index_module
from MyNoSQL.storage.shards import (
    CODEC_DEFLATE,
    CODEC_LZMA,
    HEADER_SIZE,
    pack_block,
    parse_header,
    unpack_payload,
)

# A block written by the code before codecs were tagged (flags 0, raw LZMA2): pack_block(7, [b"first record",
# b"second record, a bit longer"], 41, 42) at commit cd590fc.
OLD_BLOCK = bytes.fromhex(
    "4d4e424b010002002f00000032000000070000000000000029000000000000002a000000000000001e03bcf3d86d62fce0002e002a"
    "03000600379887c4010faba468bd0d11d510e79c675fddc054da42801f32fb5369f621406b4ac36789e71c0000"
)
RECORDS = [b"first record", b"second record, a bit longer"]


def _unpack(block: bytes) -> tuple[tuple[int, ...], list[bytes]]:
    fields = parse_header(block, "test")
    count, raw_len, _comp_len, _bno, _first, _last, crc, codec = fields
    return fields, unpack_payload(block[HEADER_SIZE:], count, raw_len, crc, "test", codec)


def test_a_block_written_before_codecs_reads_as_it_always_did() -> None:
    fields, records = _unpack(OLD_BLOCK)
    assert records == RECORDS
    assert fields[3] == 7 and fields[4:6] == (41, 42) and fields[7] == CODEC_LZMA
    assert pack_block(7, RECORDS, 41, 42) == OLD_BLOCK  # the normal codec writes what it always wrote


@pytest.mark.parametrize("codec", [CODEC_LZMA, CODEC_DEFLATE])
def test_blocks_of_each_codec_round_trip(codec: int) -> None:
    records = [os.urandom(50).hex().encode() + b'{"k":%d}' % i for i in range(200)]
    fields, out = _unpack(pack_block(3, records, 10, 209, codec))
    assert out == records and fields[7] == codec


def test_an_unknown_codec_is_reported_as_damage() -> None:
    head = bytearray(OLD_BLOCK[: HEADER_SIZE - 4])
    head[5] = 9  # flags: no such codec
    block = bytes(head) + struct.pack("<I", zlib.crc32(head)) + OLD_BLOCK[HEADER_SIZE:]
    with pytest.raises(CorruptionError, match="codec 9 is not supported"):
        parse_header(block, "test")


def test_a_deflate_block_that_does_not_end_where_it_should_is_damage() -> None:
    block = pack_block(1, RECORDS, 1, 2, CODEC_DEFLATE)
    count, raw_len, _c, _b, _f, _l, _crc, codec = parse_header(block, "test")
    cut = block[HEADER_SIZE:-3]
    with pytest.raises(CorruptionError, match="does not decompress"):
        unpack_payload(cut, count, raw_len, zlib.crc32(cut), "test", codec)


def test_a_compactor_behind_the_savers_packs_fast_blocks_and_everything_reads_back(
    location: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opts = MyNoSQL.Options(flush_docs=256, block_docs=16, flush_interval=3600, background_sync=False, codec="lzma")
    with MyNoSQL.MyNoSQL(location, options=opts) as db:
        db.opendb("fast")
        store = db.db._store
        with store._flush_lock:  # every flush here by this thread, none by the compactor
            monkeypatch.setattr(store, "_flush_due", lambda: True)  # as if a flush's worth waited already
            ids = [db.savedoc({"n": i, "pad": "x" * (i % 50)})["id"] for i in range(600)]
            store._flush_locked()
            assert store.stats.fast_blocks == store.stats.blocks > 0
            assert store.stats.blocks == -(-600 // 64)  # DEFLATE blocks hold 4 x block_docs
            assert not store._behind  # no saver was held back: the next flush starts with LZMA2...
            store._held = True  # ...unless one was: a flush ends behind when savers waited and a flush's worth did
            ids += [db.savedoc({"n": 600 + i})["id"] for i in range(10)]
            store._flush_locked()
            assert store._behind and store.stats.fast_blocks == store.stats.blocks == -(-600 // 64) + 1
            monkeypatch.undo()
            ids += [db.savedoc({"n": 610 + i})["id"] for i in range(90)]
            store._flush_locked()  # behind from its first block, though nothing waits now
            assert store.stats.fast_blocks == store.stats.blocks == -(-600 // 64) + 1 + -(-90 // 64)
            assert not store._behind
            ids += [db.savedoc({"n": 700 + i})["id"] for i in range(100)]
            store._flush_locked()  # not behind: the normal codec
            assert store.stats.blocks == store.stats.fast_blocks + -(-100 // 16)
        assert db.db.verify() == []
    with MyNoSQL.MyNoSQL(location, options=opts) as db:
        db.opendb("fast")
        assert [db.readdoc(i)["n"] for i in ids] == list(range(800))
        assert db.db.verify() == []


def test_a_flush_leaves_the_index_log_empty_once_it_grew_past_the_limit(
    location: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_module, "WAL_TRIM", 0)
    with MyNoSQL.MyNoSQL(location, options=MyNoSQL.Options(flush_interval=3600)) as db:
        db.opendb("trim")
        for i in range(500):
            db.savedoc({"n": i})
        db.db._store.flush()
        assert (location / "trim" / "index.sqlite-wal").stat().st_size == 0
        assert len(db) == 500 and db.db.verify() == []


def test_an_idle_compactor_repacks_a_shard_of_fast_blocks_with_lzma(
    location: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from MyNoSQL.storage import store as store_module

    monkeypatch.setattr(store_module, "REPACK_IDLE", 0.0)
    opts = MyNoSQL.Options(flush_docs=256, block_docs=16, flush_interval=0.05, background_sync=False, codec="lzma")
    with MyNoSQL.MyNoSQL(location, options=opts) as db:
        db.opendb("repack")
        store = db.db._store
        with store._flush_lock:  # nothing is packed (nor re-packed) until the fast blocks are all written
            monkeypatch.setattr(store, "_flush_due", lambda: True)
            ids = [db.savedoc({"n": i, "pad": "y" * (i % 40)})["id"] for i in range(700)]
            store._flush_locked()
            monkeypatch.setattr(store, "_flush_due", lambda: False)
            first = store.shards.current
            assert store.stats.fast_blocks == store.stats.blocks == -(-700 // 64)
        wait_until(lambda: not (location / "repack" / f"shard-{first:06d}.msd").exists(), timeout=30)
        assert store._count_fast() == {}
        assert db.db.verify() == []
        assert [db.readdoc(i)["n"] for i in ids] == list(range(700))
    with MyNoSQL.MyNoSQL(location, options=opts) as db:
        db.opendb("repack")
        assert [db.readdoc(i)["n"] for i in ids] == list(range(700)) and db.db.verify() == []


def test_a_replicated_bulk_load_packs_fast_blocks_then_lzma_once_idle(
    location: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mirror's _bulk_docs of >= BULK_LOAD revisions (a replication catching up) is packed with the fast codec
    while such batches keep coming (within flush_interval), a small one as usual; once idle, LZMA2 again."""
    from MyNoSQL.database import BULK_LOAD
    from MyNoSQL.records import revtree
    from MyNoSQL.storage import store as store_module

    monkeypatch.setattr(store_module, "REPACK_IDLE", 0.0)
    opts = MyNoSQL.Options(flush_interval=3600, block_docs=16, background_sync=False, codec="lzma")
    with MyNoSQL.MyNoSQL(location, options=opts) as db:
        db.opendb("ingest")
        store = db.db._store

        def batch(start: int, n: int) -> list[tuple[str, list[str], bool, bytes]]:
            out = []
            for i in range(start, start + n):
                blob = orjson_body(i)
                out.append((f"r{i:05d}", [revtree.new_rev(None, False, blob)], False, blob))
            return out

        with store._flush_lock:  # nothing is packed (nor re-packed) until both loads are written
            small = db.db.merge_replicated_many(batch(0, BULK_LOAD - 1))  # a small batch: not a bulk load
            assert all(s is not None for s in small)
            store._flush_locked()
            assert store.stats.fast_blocks == 0 and store.stats.blocks == -(-(BULK_LOAD - 1) // 16)
            assert all(s is not None for s in db.db.merge_replicated_many(batch(BULK_LOAD, 300)))
            store._flush_locked()
            assert store.stats.fast_blocks == -(-300 // 64)  # DEFLATE blocks hold 4 x block_docs
        wait_until(lambda: store._count_fast() == {}, timeout=30)  # idle: re-packed with LZMA2
        assert db.db.verify() == []
        assert [db.readdoc(f"r{i:05d}")["n"] for i in (*range(BULK_LOAD - 1), *range(BULK_LOAD, BULK_LOAD + 300))] \
            == [*range(BULK_LOAD - 1), *range(BULK_LOAD, BULK_LOAD + 300)]


def orjson_body(i: int) -> bytes:
    from MyNoSQL.records.codec import encode_body

    return encode_body({"n": i, "pad": "z" * (i % 30)})[0]


def test_the_default_codec_is_lzma_and_a_database_of_both_codecs_reads_back(location: Path) -> None:
    assert MyNoSQL.Options().codec == "lzma"  # the product's promise: records at rest are LZMA-compressed
    with MyNoSQL.MyNoSQL(location, options=MyNoSQL.Options(flush_interval=3600)) as db:
        db.opendb("mixed")
        ids = [db.savedoc({"n": i})["id"] for i in range(300)]
        store = db.db._store
        store.flush()
        assert store.stats.blocks >= 1 and store.stats.fast_blocks == 0  # nothing behind: LZMA2 blocks only
    fast = MyNoSQL.Options(flush_interval=3600, codec="deflate")
    with MyNoSQL.MyNoSQL(location, options=fast) as db:
        db.opendb("mixed")
        ids += [db.savedoc({"n": 300 + i})["id"] for i in range(300)]
        store = db.db._store
        store.flush()
        assert store.stats.fast_blocks == store.stats.blocks == -(-300 // 255)  # 4 x 64, at most 255
        assert store._count_fast() == {store.shards.current: 300}
        assert [db.readdoc(i)["n"] for i in ids] == list(range(600)) and db.db.verify() == []
    with MyNoSQL.MyNoSQL(location) as db:  # the default reads DEFLATE blocks too
        db.opendb("mixed")
        assert [db.readdoc(i)["n"] for i in ids] == list(range(600)) and db.db.verify() == []
    with pytest.raises(ValueError, match="codec"):
        MyNoSQL.Options(codec="zstd")  # type: ignore[arg-type]
