"""A Peer's replication: one mirror at a time, pushing and polling side by side.

* push: the local changes feed since the push checkpoint goes to the current mirror (a durable outbox: what was
  saved offline, or before a crash or exit, is pushed when a mirror answers);
* poll: the mirror's changes feed since the poll checkpoint (longpoll: an idle poll is one small round trip);
  records this peer holds and for which the mirror has revisions it lacks are downloaded;
* subscriptions (``subscribe``): when the poll brought changes, or the selectors changed, the mirror's changes
  feed filtered by the selectors (``filter=_selector``, documents included) since the subscription checkpoint:
  only matching records travel, and they are held (and so polled) from then on;
* fetch: a record the application reads and this peer does not hold is asked of a mirror (``readdoc``); records
  come with their attachments as stubs, and the bytes of an attachment are asked of a mirror when the
  application reads them (``getattachment``);
* the mirror list is learned from ``GET /_mirrors`` and remembered; when the current mirror fails, the next one
  is tried (failover).

Everything runs as tasks on the node's event loop (:class:`~MyNoSQL.replication.runtime.LoopThread`); blocking
database work goes to its worker threads. The node calls :meth:`PeerSync.final_push` before it closes the
database, then :meth:`PeerSync.stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from ..database import Database
from ..errors import DocumentUnavailable, InvalidDocument, RemoteError
from ..net.urls import db_url, redact_url
from ..options import Options
from ..records.ids import validate_id
from .endpoints import HttpEndpoint, LocalEndpoint, client_session, doc_path, push_checkpoint_id, rechunk
from .remote import Backoff, MirrorLearner, RemoteState
from .replicator import Resume, replicate

log = logging.getLogger("MyNoSQL")

RECHECK = "peer-recheck"  # the _local document of records to ask each mirror about again (PeerSync._mark_recheck)


class PeerSync:
    """Started and stopped by its node, on the node's event loop."""

    def __init__(self, db: Database, opts: Options) -> None:
        self.db = db
        self.opts = opts
        self.remotes: dict[str, RemoteState] = {}
        self.current: str | None = None  # the mirror this peer talks to now
        self.learner = MirrorLearner(db, opts, own=set)
        # names this peer to its mirrors, which then leave its own writes out of its longpoll answers
        self.client_token = secrets.token_hex(8)
        self._session: aiohttp.ClientSession | None = None
        self._changed: asyncio.Event | None = None
        self._push_lock: asyncio.Lock | None = None
        self._task: asyncio.Task[None] | None = None
        self._unlisten: Callable[[], None] | None = None
        self._resume: dict[str, Resume] = {}  # per mirror: where the push stands (no checkpoint re-reads)
        self._poll_since: dict[str, Any] = {}
        self._recheck_lock: asyncio.Lock | None = None
        self._endpoints: dict[str, HttpEndpoint] = {}
        self._subs_event: asyncio.Event | None = None  # set: catch up on the subscriptions
        self._event_loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle (on the loop) ------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._session = client_session(self.opts)
        self._changed = asyncio.Event()
        self._push_lock = asyncio.Lock()
        self._recheck_lock = asyncio.Lock()
        self._subs_event = asyncio.Event()
        self._subs_event.set()
        self._event_loop = loop
        changed = self._changed

        def on_change(new: Any, prev: Any) -> None:  # in the saving thread
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(changed.set)

        await asyncio.to_thread(self._read_checkpoints)
        self._unlisten = self.db.on_change(on_change)
        self._task = asyncio.create_task(self._loop(), name=f"MyNoSQL-peer-{self.db.name}")

    def _read_checkpoints(self) -> None:
        """How far each known mirror has been pushed to, as the persisted checkpoints say (status before the
        first round)."""
        for url in self.db.config.peers:
            ck = self.db.local_get(push_checkpoint_id(self.db, url))
            seq = ck.get("source_last_seq") if ck else 0
            state = self._state(url)
            if isinstance(seq, int) and state.pushed_seq is None:
                state.pushed_seq = seq

    async def final_push(self) -> int:
        """One last push of what is not pushed yet, to the current mirror or else the first that answers. Returns
        how many changes are still not pushed (0: all). The caller bounds it in time (``Options.final_push``)."""
        urls = list(dict.fromkeys([u for u in (self.current, *self.db.config.peers) if u]))
        for url in urls:
            try:
                await self._push(url)
                return 0
            except Exception as exc:  # tried in turn; the last error is in status and the log
                self._state(url).failed(exc)
        return self.pending()

    def pending(self) -> int:
        """Local changes not known to be pushed to any mirror (an upper bound)."""
        pushed = [s.pushed_seq for s in self.remotes.values() if s.pushed_seq is not None]
        return max(0, self.db.seq - max(pushed, default=0))

    async def stop(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the loop ---------------------------------------------------------------------------------------------

    def _state(self, url: str) -> RemoteState:
        return self.remotes.setdefault(redact_url(url), RemoteState(redact_url(url)))

    def _session_(self) -> aiohttp.ClientSession:
        assert self._session is not None, "PeerSync is not started"
        return self._session

    async def _new_session(self) -> None:
        old, self._session = self._session, client_session(self.opts)
        if old is not None:
            await old.close()

    async def _loop(self) -> None:
        """Talk to one mirror at a time, pushing and polling side by side; on failure try the next (failover)."""
        backoff = Backoff()
        index = 0
        while True:
            peers = list(self.db.config.peers)
            if not peers:
                await asyncio.sleep(1.0)
                continue
            url = peers[index % len(peers)]
            state = self._state(url)
            tasks: list[asyncio.Task[None]] = []
            try:
                await self.learner.refresh(url, self._session_())
                self.current = url
                await self._push(url)  # the outbox first: what was saved offline or before a crash
                backoff.reset()
                tasks = [asyncio.create_task(self._push_loop(url)), asyncio.create_task(self._poll_loop(url)),
                         asyncio.create_task(self._subscription_loop(url))]
                # FIRST_COMPLETED, not FIRST_EXCEPTION: a loop that ended by cancellation (which FIRST_EXCEPTION
                # ignores) left the other one running alone, e.g. a peer still pushing but never polling again.
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    if t.cancelled():
                        raise RemoteError(f"{redact_url(url)}: a replication loop was cancelled; starting afresh")
                    t.result()  # raises the failure that ended the loop
                raise RemoteError(f"{redact_url(url)}: a replication loop ended; starting afresh")
            except Exception as exc:  # any failure: a background loop must never die (cancellation still ends it)
                state.failed(exc)
                self._resume.pop(url, None)
                await self._new_session()  # pooled connections may be dead or black-holed: start afresh
                index += 1  # fail over to the next mirror
                if index % len(peers) == 0:
                    await asyncio.sleep(backoff.next())
            finally:
                for t in tasks:
                    t.cancel()
                for t in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t

    async def _push_loop(self, url: str) -> None:
        """Push after every local change (a save made during a push wakes the next one at once)."""
        assert self._changed is not None
        state = self._state(url)
        while True:
            self._changed.clear()
            if state.pushed_seq != self.db.seq:
                await self._push(url)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 30.0)

    async def _poll_loop(self, url: str) -> None:
        while True:
            await self._poll(url)

    def _endpoint(self, url: str) -> HttpEndpoint:
        """One HttpEndpoint per mirror and session: it remembers that the mirror exists and speaks MyNoSQL."""
        ep = self._endpoints.get(url)
        if ep is None or ep.session is not self._session:
            ep = HttpEndpoint(self._session_(), db_url(url, self.db.name), timeout=self.opts.remote_timeout,
                              client=self.client_token, track_behind=True)
            self._endpoints[url] = ep
        return ep

    async def _push(self, url: str) -> None:
        assert self._push_lock is not None
        async with self._push_lock:  # the push loop and the final push never run two passes at once
            state = self._state(url)
            remote = self._endpoint(url)
            await remote.ensure_exists()
            resume = self._resume.setdefault(url, Resume())
            try:
                res = await replicate(LocalEndpoint(self.db), remote, resume=resume)
            finally:
                # Records the mirror already had the pushed revisions of, as ancestors of later ones: changes this
                # peer's poll may have passed before it held them (it created them anew, offline, with the same
                # content: the same revision). Its next poll asks for their leaves. Chaos seed 94028.
                if remote.behind:  # kept until marked: a failure to mark them leaves them for the next push
                    behind = sorted(remote.behind)
                    await self._mark_recheck(behind, [url])
                    remote.behind.difference_update(behind)
            state.ok()
            state.docs_pushed += res.docs_written
            if isinstance(res.last_seq, int):  # the local feed is empty past it: everything up to it is pushed
                state.pushed_seq = res.last_seq

    async def _poll(self, url: str) -> None:
        """Wait (longpoll) for the mirror's changes to records this peer holds, then download them."""
        state = self._state(url)
        remote = self._endpoint(url)
        ck_id = "poll-" + remote.identity
        since = self._poll_since.get(url)
        if since is None:
            ck = await asyncio.to_thread(self.db.local_get, ck_id)
            # A peer that never held a record needs no change from before now: what it reads or subscribes to
            # later comes as it is then (a fresh device does not read the whole feed of a big mirror).
            since = ck.get("since", 0) if ck else ("now" if self.db.seq == 0 else 0)
        await self._recheck_held(url, remote)
        rows, last_seq = await remote.changes(since, 1000, timeout=self.opts.longpoll)
        state.ok()
        # the mirror's latest seq (a MyNoSQL mirror says it; a batch may end before it), else where the feed ended
        state.remote_seq = remote.update_seq if remote.update_seq is not None else last_seq
        if rows:
            if self.db.config.subscriptions and self._subs_event is not None:
                self._subs_event.set()  # a change may be one a subscription wants
            pulled = await self._download_held(remote, rows)
            state.docs_pulled += pulled
            await asyncio.to_thread(self.db.local_put, ck_id, {"since": last_seq})
        # Only now: a download that fails (the link drops) must be retried from the same rows, not skipped.
        self._poll_since[url] = last_seq
        state.pulled_seq = last_seq
        await self._recheck_held(url, remote)  # records read through while this poll waited

    async def _mark_recheck(self, ids: list[str], urls: list[str] | None = None) -> None:
        """Records came to be held here (a read-through) while a mirror's poll position may be past a change that
        has a newer revision of them (one answered by another mirror, or read before that poll had a position: a
        first poll starts "now"), or a mirror said it has later revisions than those pushed to it. Those mirrors
        (``urls``; None: every known one) are asked for their leaves at their next poll; the marks are a
        ``_local`` document, so they outlive this process (a takeover). Chaos seed 91050: a peer kept an older
        revision for good."""
        assert self._recheck_lock is not None
        async with self._recheck_lock:
            def mark() -> None:
                doc = self.db.local_get(RECHECK) or {}
                marks: dict[str, list[str]] = doc.get("ids") or {}
                for url in self.db.config.peers if urls is None else urls:
                    held = marks.setdefault(url, [])
                    held.extend(id for id in ids if id not in held)
                self.db.local_put(RECHECK, {"ids": marks})
            await asyncio.to_thread(mark)

    async def _recheck_held(self, url: str, remote: HttpEndpoint) -> None:
        """Every leaf mirror ``url`` has of the records marked by :meth:`_mark_recheck` for it."""
        assert self._recheck_lock is not None
        doc = await asyncio.to_thread(self.db.local_get, RECHECK)
        ids = ((doc or {}).get("ids") or {}).get(url)
        if not ids:
            return
        for id in ids:  # a failure leaves every mark: the next poll asks again (asking twice is harmless)
            found = await self._leaves(remote, id)
            if found:
                await LocalEndpoint(self.db, lazy=True).bulk_docs(found)
        done = set(ids)
        async with self._recheck_lock:
            def unmark() -> None:  # marks made meanwhile stay
                doc = self.db.local_get(RECHECK) or {}
                marks: dict[str, list[str]] = doc.get("ids") or {}
                left = [i for i in marks.get(url, []) if i not in done]
                if left:
                    marks[url] = left
                else:
                    marks.pop(url, None)
                self.db.local_put(RECHECK, {"ids": marks} if marks else None)
            await asyncio.to_thread(unmark)

    async def _leaves(self, remote: HttpEndpoint, id: str) -> list[dict[str, Any]]:
        """Every leaf revision the mirror has of ``id`` (with its history), [] if it has none."""
        try:
            docs = await remote.request("GET", doc_path(id), params={"open_revs": "all", "revs": "true"},
                                        timeout=self.opts.read_timeout)
        except RemoteError as exc:
            if exc.status == 404:
                return []
            raise
        return [d["ok"] for d in docs if isinstance(d, dict) and "ok" in d] if isinstance(docs, list) else []

    async def _download_held(self, remote: HttpEndpoint, rows: list[dict[str, Any]]) -> int:
        """Fetch the revisions the mirror has of records held here and this peer lacks."""
        query = {r["id"]: [c["rev"] for c in r.get("changes", [])] for r in rows if isinstance(r.get("id"), str)}

        def held_missing() -> dict[str, list[str]]:
            out = {}
            for id, revs in query.items():
                st = self.db.state(id)
                if st is not None:
                    missing = [r for r in revs if r not in st.tree]
                    if missing:
                        out[id] = missing
            return out

        want = await asyncio.to_thread(held_missing)
        if not want:
            return 0
        docs = await remote.bulk_get(want)
        errors, written, _ck = await LocalEndpoint(self.db, lazy=True).bulk_docs(docs)
        got = {(d.get("_id"), d.get("_rev")) for d in docs if isinstance(d, dict)}
        lacking = [(id, rev) for id, revs in want.items() for rev in revs if (id, rev) not in got]
        if errors or lacking:  # the poll position must not move past rows not downloaded: retry them
            raise RemoteError(f"{remote.url}: {len(lacking)} wanted revision(s) not served, {len(errors)} refused "
                              f"(first: {(lacking or errors)[0]})", kind="protocol")
        return written

    # -- subscriptions --------------------------------------------------------------------------------------

    def subscriptions_changed(self) -> None:
        """The selectors changed (any thread): catch up on them now."""
        loop, event = self._event_loop, self._subs_event
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(event.set)

    async def _subscription_loop(self, url: str) -> None:
        assert self._subs_event is not None
        while True:
            await self._subs_event.wait()
            self._subs_event.clear()
            await self._sync_subscriptions(url)

    async def _sync_subscriptions(self, url: str) -> int:
        """Download what the subscriptions' selectors match and this peer lacks, since their checkpoint with this
        mirror (a new set of selectors starts from the beginning). Returns the records written."""
        subs = self.db.config.subscriptions
        if not subs:
            return 0
        remote = self._endpoint(url)
        selectors = sorted((s["selector"] for s in subs), key=lambda s: orjson.dumps(s, option=orjson.OPT_SORT_KEYS))
        selector = selectors[0] if len(selectors) == 1 else {"$or": selectors}
        key = hashlib.sha1(orjson.dumps(selector, option=orjson.OPT_SORT_KEYS), usedforsecurity=False).hexdigest()
        ck_id = f"sub-{remote.identity}-{key[:16]}"
        ck = await asyncio.to_thread(self.db.local_get, ck_id)
        since: Any = ck.get("since", 0) if ck else 0
        written = 0
        while True:
            params = {"filter": "_selector", "include_docs": "true", "revs": "true", "style": "all_docs",
                      "since": str(since), "limit": "1000"}
            result = await remote.request("POST", "/_changes", params=params, body={"selector": selector})
            rows = [r for r in result.get("results", []) if isinstance(r, dict)]
            docs = [r["doc"] for r in rows if isinstance(r.get("doc"), dict)]
            if docs:
                errors, n, _ck = await LocalEndpoint(self.db).bulk_docs(docs)
                if errors:
                    raise RemoteError(f"{remote.url}: {len(errors)} subscribed record(s) refused (first: "
                                      f"{errors[0]})", kind="protocol")
                written += n
                await self._download_held(remote, rows)  # other leaves (conflicts) of what is held now
            since = result.get("last_seq", since)
            await asyncio.to_thread(self.db.local_put, ck_id, {"since": since})
            if len(rows) < 1000:
                break
        state = self._state(url)
        state.docs_pulled += written
        return written

    # -- read-through -----------------------------------------------------------------------------------------

    async def fetch(self, id: str) -> tuple[bool, str | None]:
        """Download every leaf of ``id`` from a mirror (a peer reading a record it does not hold). Returns
        (found, why no mirror could be asked: None when one answered)."""
        id = validate_id(id)
        why = "no mirror is known (addpeer)"
        for url in dict.fromkeys([u for u in (self.current, *self.db.config.peers) if u]):
            remote = HttpEndpoint(self._session_(), db_url(url, self.db.name), timeout=self.opts.read_timeout)
            try:
                found = await self._leaves(remote, id)
            except RemoteError as exc:
                why = str(exc)
                continue
            except asyncio.TimeoutError:
                why = f"{redact_url(url)} did not answer within {self.opts.read_timeout} s"
                continue
            if found:
                await self._mark_recheck([id])  # first: a crash right after the write must not lose the mark
                await LocalEndpoint(self.db, lazy=True).bulk_docs(found)
            return bool(found), None
        return False, why

    async def fetch_attachment(self, id: str, rev: str, name: str, meta: dict[str, Any]) -> str:
        """Download the bytes of an attachment this peer holds only the stub of, from a mirror (the current one
        first), streamed to disk; they must match the stub's digest. Returns the blob. Each step (connecting,
        each read) waits at most ``Options.read_timeout``; :class:`DocumentUnavailable` if no mirror served them."""
        why = "no mirror is known (addpeer)"
        for url in dict.fromkeys([u for u in (self.current, *self.db.config.peers) if u]):
            remote = HttpEndpoint(self._session_(), db_url(url, self.db.name), timeout=self.opts.read_timeout)
            for which in (rev, None):  # that revision; else the winner's, if it has the same bytes
                writer = await asyncio.to_thread(self.db.attachment_writer, meta["content_type"])
                try:
                    async for chunk in rechunk(remote.attachment_chunks(id, which, name)):
                        await asyncio.to_thread(writer.write, chunk)
                    return await asyncio.to_thread(self.db.store_fetched, writer, id, meta["digest"])
                except RemoteError as exc:
                    await asyncio.to_thread(writer.abort)
                    why = str(exc)
                    if exc.status != 404:
                        break  # this mirror cannot: the next one
                except InvalidDocument as exc:  # not the bytes of that digest
                    why = f"{redact_url(url)}: {exc}"
                except BaseException:
                    await asyncio.to_thread(writer.abort)
                    raise
        raise DocumentUnavailable(id, f"the bytes of attachment {name!r}: {why}")

    # -- status -----------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        seq = self.db.seq
        out = {}
        for url, st in list(self.remotes.items()):
            out[url] = {
                "reachable": st.reachable,
                "last_success": st.last_success,
                "last_error": st.last_error,
                "pending": None if st.pushed_seq is None else max(0, seq - st.pushed_seq),
                "lag": st.lag,
                "failures": st.failures,
                "docs_pushed": st.docs_pushed,
                "docs_pulled": st.docs_pulled,
                "current": redact_url(self.current) == url if self.current else False,
            }
        return out
