"""A database's own routes on a mirror, as CouchDB has them: ``GET|HEAD|PUT|DELETE /{db}``, ``POST /{db}``,
``_all_docs`` (GET and POST), ``_security``, ``_revs_limit``, ``_purge``, ``_purged_infos``,
``_purged_infos_limit``, ``_compact``, ``_view_cleanup``,
``_ensure_full_commit``, and the design-document routes that would run JavaScript (answered 501: MyNoSQL runs
none; design documents themselves are stored and replicated as any document)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiohttp import web

from ..database import Database
from ..net import wire
from ..records.ids import DESIGN_PREFIX, new_id
from ..records.revtree import DocState
from .context import ServerContext
from .documents import no_follows
from .registry import name_of
from .requests import NOT_ADMIN, HttpError, flag, json_response, reserved

log = logging.getLogger("MyNoSQL")

NO_JAVASCRIPT = ("MyNoSQL runs no JavaScript: views, shows, lists, update and filter functions of design "
                 "documents are not supported (design documents are stored and replicated; use Mango: _find)")


def database_info(db: Database) -> dict[str, Any]:
    """CouchDB's ``GET /{db}`` answer (sizes: the bytes of the database folder)."""
    disk = sum(p.stat().st_size for p in db.path.iterdir() if p.is_file())
    return {"db_name": name_of(db.name), "update_seq": db.seq,
            "sizes": {"file": disk, "external": disk, "active": disk}, "purge_seq": db.purge_seq,
            "other": {"data_size": disk}, "doc_del_count": db.deleted_count(), "doc_count": len(db),
            "disk_size": disk, "disk_format_version": 8, "data_size": disk, "compact_running": False,
            "cluster": {"q": 1, "n": 1, "w": 1, "r": 1}, "instance_start_time": "0", "props": {}}


def _json_param(request: web.Request, *names: str) -> Any:
    """The first of ``names`` in the query, parsed as JSON (CouchDB's keys are JSON); a 400 if it is not."""
    for name in names:
        if name in request.query:
            try:
                return orjson.loads(request.query[name])
            except orjson.JSONDecodeError as exc:
                raise HttpError(400, "bad_request", f"{name} must be JSON") from exc
    return None


class DatabaseRoutes:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.rules = ctx.rules

    def add_to(self, r: web.UrlDispatcher) -> None:
        for path in ("/{db}", "/{db}/"):
            r.add_get(path, self.info)
            r.add_put(path, self.create)
            r.add_delete(path, self.delete)
            r.add_post(path, self.post_doc)
        r.add_get("/{db}/_all_docs", self.all_docs)
        r.add_post("/{db}/_all_docs", self.all_docs)
        r.add_get("/{db}/_security", self.get_security)
        r.add_put("/{db}/_security", self.put_security)
        r.add_get("/{db}/_revs_limit", self.get_revs_limit)
        r.add_put("/{db}/_revs_limit", self.put_revs_limit)
        r.add_post("/{db}/_purge", self.purge)
        r.add_route("*", "/{db}/_purge", self.not_allowed("POST"))
        r.add_get("/{db}/_purged_infos", self.purged_infos)
        r.add_route("*", "/{db}/_purged_infos", self.not_allowed("GET"))
        r.add_get("/{db}/_purged_infos_limit", self.get_purged_infos_limit)
        r.add_put("/{db}/_purged_infos_limit", self.put_purged_infos_limit)
        r.add_route("*", "/{db}/_purged_infos_limit", self.not_allowed("GET,PUT"))
        r.add_post("/{db}/_compact", self.compact)
        r.add_post("/{db}/_compact/{ddoc}", self.compact)
        r.add_post("/{db}/_view_cleanup", self.view_cleanup)
        r.add_post("/{db}/_ensure_full_commit", self.full_commit)
        for kind in ("_view", "_show", "_list", "_update", "_rewrite", "_search", "_spatial"):
            r.add_route("*", f"/{{db}}/_design/{{ddoc}}/{kind}{{rest:.*}}", self.no_javascript)
        r.add_get("/{db}/_design/{ddoc}/_info", self.design_info)
        r.add_get("/{db}/_design_docs", self.design_docs)
        r.add_post("/{db}/_design_docs", self.design_docs)

    # -- the database -------------------------------------------------------------------------------------------

    async def info(self, request: web.Request) -> web.Response:
        """``GET|HEAD /{db}``: CouchDB's database information."""
        db = await self.ctx.db(request)
        return json_response(await asyncio.to_thread(database_info, db))

    async def create(self, request: web.Request) -> web.Response:
        """``PUT /{db}`` (server admins): a new database; 412 if it exists, 400 for a name CouchDB refuses."""
        self.ctx.require_admin(request)
        await self.ctx.dbs.create(request.match_info["db"])
        resp = json_response({"ok": True}, 201)
        resp.headers["Location"] = str(request.url)
        return resp

    async def delete(self, request: web.Request) -> web.Response:
        """``DELETE /{db}`` (server admins): close the database and remove its folder; 404 if there is none."""
        self.ctx.require_admin(request)
        if "rev" in request.query:  # CouchDB: a document id was probably forgotten in the URL
            raise HttpError(400, "bad_request", "You tried to DELETE a database with a ?rev= parameter. Did you "
                            "mean to DELETE a document instead?")
        await self.ctx.dbs.delete(request.match_info["db"])
        return json_response({"ok": True})

    async def post_doc(self, request: web.Request) -> web.Response:
        """``POST /{db}``: save a new document (its ``_id`` generated when it has none)."""
        db = await self.ctx.db(request)
        body = await self.rules.body(request)
        if not isinstance(body, dict):
            raise HttpError(400, "bad_request", "Document must be a JSON object")
        body.setdefault("_id", new_id())
        if isinstance(body["_id"], str) and body["_id"].startswith(DESIGN_PREFIX) \
                and not self.ctx.is_db_admin(request, db):
            raise HttpError(401, "unauthorized", NOT_ADMIN)
        edit = self.rules.record(db, body, None)
        record = edit.record or {}
        saved = await asyncio.to_thread(db.save_deleted, edit.id, edit.rev, record) if edit.deleted else \
            await asyncio.to_thread(db.save_with_attachments, record, no_follows(edit.atts))
        status = 202 if request.query.get("batch") == "ok" else 201
        resp = json_response({"ok": True, "id": saved["id"], "rev": saved["rev"]}, status)
        resp.headers["Location"] = f"{request.url}/{saved['id']}"
        return resp

    async def full_commit(self, request: web.Request) -> web.Response:
        await self.ctx.db(request)
        return json_response({"ok": True, "instance_start_time": "0"}, 201)

    # -- _all_docs ----------------------------------------------------------------------------------------------

    async def all_docs(self, request: web.Request) -> web.Response:
        """``GET|POST /{db}/_all_docs``: documents by id, as CouchDB: ``keys`` (GET, or POST ``{"keys": [...]}``),
        ``key``, ``startkey``/``endkey`` (also ``start_key``/``end_key``), ``inclusive_end``, ``descending``,
        ``include_docs``, ``conflicts``, ``limit``, ``skip``, ``update_seq``."""
        db = await self.ctx.db(request)
        keys = _json_param(request, "keys")
        if request.method == "POST":
            body = await self.rules.body(request)
            if not isinstance(body, dict):
                raise HttpError(400, "bad_request", "expected {keys: [...]}")
            keys = body.get("keys", keys)
        if keys is not None and (not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)):
            raise HttpError(400, "bad_request", "`keys` must be a list of document ids")
        if keys is not None:
            self.rules.batch(keys, "keys")
        key = _json_param(request, "key")
        start = _json_param(request, "startkey", "start_key")
        end = _json_param(request, "endkey", "end_key")
        try:
            skip = max(0, int(request.query.get("skip", 0)))
            limit = int(request.query["limit"]) if "limit" in request.query else None
        except ValueError as exc:
            raise HttpError(400, "bad_request", "skip and limit must be integers") from exc
        if limit is not None and limit < 0:
            raise HttpError(400, "query_parse_error", "limit must be a positive integer")
        descending = flag(request, "descending")
        inclusive_end = request.query.get("inclusive_end", "true").lower() != "false"
        include_docs = flag(request, "include_docs")
        conflicts = flag(request, "conflicts")

        def row(s: DocState) -> dict[str, Any]:
            win = s.winner
            r: dict[str, Any] = {"id": s.id, "key": s.id, "value": {"rev": win}}
            if s.tree[win][1]:
                r["value"]["deleted"] = True
                if include_docs:
                    r["doc"] = None
            elif include_docs:
                r["doc"] = wire.doc_to_wire(s, win, conflicts=conflicts)
            return r

        def by_keys(wanted: list[str]) -> tuple[list[dict[str, Any]], int]:
            out = []
            for k in wanted:
                s = db.state(k)
                out.append(row(s) if s is not None else {"key": k, "error": "not_found"})
            if descending:
                out.reverse()
            return out, len(db)

        def by_range() -> tuple[list[dict[str, Any]], int, int]:
            states = sorted((s for s in db.states_since(0) if not s.deleted), key=lambda s: s.id)
            ids = [s.id for s in states]
            if descending:
                states.reverse()
                ids.reverse()
            lo, hi = (end, start) if descending else (start, end)
            if key is not None:
                lo = hi = key
            picked = []
            before = 0
            for s in states:
                if isinstance(lo, str) and s.id < lo:
                    if not descending:
                        before += 1
                    continue
                if isinstance(hi, str) and (s.id > hi or (s.id == hi and not inclusive_end
                                                          and hi is (start if descending else end))):
                    if descending:
                        before += 1
                    continue
                picked.append(s)
            page = picked[skip:] if limit is None else picked[skip:skip + limit]
            return [row(s) for s in page], len(states), before + min(skip, len(picked))

        if keys is not None:
            rows, total = await asyncio.to_thread(by_keys, keys)
            offset = 0
            rows = rows[skip:] if limit is None else rows[skip:skip + limit]
        else:
            rows, total, offset = await asyncio.to_thread(by_range)
        out: dict[str, Any] = {"total_rows": total, "offset": offset, "rows": rows}
        if flag(request, "update_seq"):
            out["update_seq"] = db.seq
        return json_response(out)

    async def design_docs(self, request: web.Request) -> web.Response:
        """``GET|POST /{db}/_design_docs``: the design documents (as ``_all_docs`` between ``_design/`` keys)."""
        db = await self.ctx.db(request)
        include_docs = flag(request, "include_docs")

        def read() -> list[dict[str, Any]]:
            out = []
            for s in sorted(db.states_since(0), key=lambda s: s.id):
                if s.id.startswith(DESIGN_PREFIX) and not s.deleted:
                    r: dict[str, Any] = {"id": s.id, "key": s.id, "value": {"rev": s.winner}}
                    if include_docs:
                        r["doc"] = wire.doc_to_wire(s, s.winner)
                    out.append(r)
            return out

        rows = await asyncio.to_thread(read)
        return json_response({"total_rows": len(rows), "offset": 0, "rows": rows})

    # -- settings -------------------------------------------------------------------------------------------

    async def get_security(self, request: web.Request) -> web.Response:
        db = await self.ctx.db(request)
        return json_response(db.security)

    async def put_security(self, request: web.Request) -> web.Response:
        """``PUT /{db}/_security`` (database or server admins): ``admins`` and ``members``, names and roles."""
        db = await self.ctx.db(request)
        self.ctx.require_db_admin(request, db)
        body = await self.rules.body(request)
        await asyncio.to_thread(db.set_security, body)
        return json_response({"ok": True})

    async def get_revs_limit(self, request: web.Request) -> web.Response:
        db = await self.ctx.db(request)
        return json_response(db.revs_limit)

    async def put_revs_limit(self, request: web.Request) -> web.Response:
        db = await self.ctx.db(request)
        self.ctx.require_db_admin(request, db)
        body = await self.rules.body(request)
        if type(body) is not int or body < 1:
            raise HttpError(400, "bad_request", "the revs limit must be a positive integer")
        await asyncio.to_thread(db.set_revs_limit, body)
        return json_response({"ok": True})

    # -- purge --------------------------------------------------------------------------------------------------

    async def purge(self, request: web.Request) -> web.Response:
        """``POST /{db}/_purge`` (server admins, as CouchDB): ``{id: [rev, ...]}`` -> 201 ``{"purge_seq": null,
        "purged": {id: [the revisions purged]}}``. Only leaves are purged; a record whose every leaf is, is gone."""
        self.ctx.require_admin(request)
        db = await self.ctx.db(request)
        if request.content_type != "application/json":
            raise HttpError(415, "bad_content_type", "Content-Type must be application/json")
        body = await self.rules.revs_body(request)

        def run() -> dict[str, list[str]]:
            done = db.purge_many({id: revs for id, revs in body.items() if not reserved(id)})
            return {id: done.get(id, []) for id in body}  # a reserved id (_local/...) is never a record here

        return json_response({"purge_seq": None, "purged": await asyncio.to_thread(run)}, 201)

    async def purged_infos(self, request: web.Request) -> web.Response:
        """``GET /{db}/_purged_infos``: the newest purges (``_purged_infos_limit`` of them), oldest first."""
        db = await self.ctx.db(request)
        infos = await asyncio.to_thread(db.purged_infos)
        return json_response({"purged_infos": [{"id": p["id"], "revs": p["revs"]} for p in infos]})

    async def get_purged_infos_limit(self, request: web.Request) -> web.Response:
        self.ctx.require_admin(request)
        db = await self.ctx.db(request)
        return json_response(db.purged_infos_limit)

    async def put_purged_infos_limit(self, request: web.Request) -> web.Response:
        self.ctx.require_admin(request)
        db = await self.ctx.db(request)
        body = await self.rules.body(request)
        if type(body) is not int or not 1 <= body <= 1_000_000_000:
            raise HttpError(400, "bad_request", "`purged_infos_limit` must be positive integer")
        await asyncio.to_thread(db.set_purged_infos_limit, body)
        return json_response({"ok": True})

    @staticmethod
    def not_allowed(allowed: str) -> Any:
        async def answer(request: web.Request) -> web.Response:
            resp = json_response({"error": "method_not_allowed", "reason": f"Only {allowed} allowed"}, 405)
            resp.headers["Allow"] = allowed
            return resp

        return answer

    async def compact(self, request: web.Request) -> web.Response:
        """``POST /{db}/_compact`` (database or server admins): rewrite the shards holding dead revisions, in the
        background (202 at once, as CouchDB). There are no views: ``_compact/{ddoc}`` has nothing to do."""
        db = await self.ctx.db(request)
        self.ctx.require_db_admin(request, db)
        if request.content_type != "application/json":
            raise HttpError(415, "bad_content_type", "Content-Type must be application/json")
        if "ddoc" not in request.match_info:
            name = db.name
            self.ctx.dbs.hold(name)  # stays open until the compaction is done

            async def run() -> None:
                try:
                    await asyncio.to_thread(db.compact)
                except Exception as exc:
                    log.error("compaction of %s failed: %s", name, exc)
                finally:
                    self.ctx.dbs.release(name)

            self.ctx.spawn(run())
        return json_response({"ok": True}, 202)

    async def view_cleanup(self, request: web.Request) -> web.Response:
        db = await self.ctx.db(request)
        self.ctx.require_db_admin(request, db)
        return json_response({"ok": True}, 202)

    async def no_javascript(self, request: web.Request) -> web.Response:
        await self.ctx.db(request)
        raise HttpError(501, "not_implemented", NO_JAVASCRIPT)

    async def design_info(self, request: web.Request) -> web.Response:
        db = await self.ctx.db(request)
        name = request.match_info["ddoc"]
        state = await asyncio.to_thread(db.state, DESIGN_PREFIX + name)
        if state is None or state.deleted:
            raise HttpError(404, "not_found", "missing")
        return json_response({"name": name, "view_index": {"updater_running": False, "compact_running": False,
                                                           "waiting_clients": 0, "signature": "", "sizes": {
                                                               "file": 0, "external": 0, "active": 0}}})
