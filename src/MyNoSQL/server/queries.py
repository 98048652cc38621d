"""Mango queries over HTTP, as CouchDB serves them: ``POST /{db}/_find``, ``POST /{db}/_explain``,
``GET|POST /{db}/_index``, ``DELETE /{db}/_index/{ddoc}/json/{name}``; and the selector of
``POST /{db}/_changes?filter=_selector`` (:func:`selector_filter`).

Documents are matched and returned in their CouchDB form (``_id``, ``_rev``, the stored JSON body: tagged values
as their ``{"$tag": ...}`` objects). ``_find`` answers at most 25 documents unless ``limit`` says otherwise (as
CouchDB); ``bookmark`` is not supported (``"nil"``): page with ``skip``. An index created over HTTP is built in the
background; until it is built, queries are answered without it (the same documents, read another way).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..errors import IndexNotFound, NoUsableIndex
from ..records.mango import compile_selector, match_doc
from ..records.revtree import DocState
from .context import ServerContext
from .requests import HttpError, json_response

DEFAULT_LIMIT = 25
_SCAN_WARNING = "No matching index found, create an index to optimize query time."


class QueryRoutes:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def add_to(self, r: web.UrlDispatcher) -> None:
        """Before the document routes: ``/{db}/{id}`` would take ``/{db}/_index``."""
        r.add_post("/{db}/_find", self.find)
        r.add_post("/{db}/_explain", self.explain)
        r.add_get("/{db}/_index", self.list_indexes)
        r.add_post("/{db}/_index", self.create_index)
        r.add_delete("/{db}/_index/_design/{ddoc}/json/{name}", self.drop_index)
        r.add_delete("/{db}/_index/{ddoc}/json/{name}", self.drop_index)

    async def _query_body(self, request: web.Request) -> dict[str, Any]:
        body = await self.ctx.rules.body(request)
        if not isinstance(body, dict) or not isinstance(body.get("selector"), dict):
            raise HttpError(400, "bad_request", "the body must be a JSON object with a selector object")
        return body

    @staticmethod
    def _opts(body: dict[str, Any]) -> dict[str, Any]:
        return {"fields": body.get("fields"), "sort": body.get("sort"), "limit": body.get("limit", DEFAULT_LIMIT),
                "skip": body.get("skip", 0), "use_index": body.get("use_index") or None, "python": False}

    async def find(self, request: web.Request) -> web.Response:
        db = await self.ctx.db(request)
        body = await self._query_body(request)
        try:
            docs, plan = await asyncio.to_thread(db.queries.query, body["selector"], **self._opts(body))
        except (IndexNotFound, NoUsableIndex) as exc:
            raise HttpError(400, "no_usable_index", str(exc)) from exc
        out: dict[str, Any] = {"docs": docs, "bookmark": "nil"}
        if plan.kind == "scan":
            out["warning"] = plan.warning or _SCAN_WARNING
        elif plan.warning:
            out["warning"] = plan.warning
        if body.get("execution_stats") is True:
            out["execution_stats"] = {"results_returned": len(docs)}
        return json_response(out)

    async def explain(self, request: web.Request) -> web.Response:
        db = await self.ctx.db(request)
        body = await self._query_body(request)
        try:
            answer = await asyncio.to_thread(db.queries.explain, body["selector"], **self._opts(body))
        except (IndexNotFound, NoUsableIndex) as exc:
            raise HttpError(400, "no_usable_index", str(exc)) from exc
        return json_response(answer)

    async def list_indexes(self, request: web.Request) -> web.Response:
        db = await self.ctx.db(request)
        indexes = db.queries.describe()
        return json_response({"total_rows": len(indexes), "indexes": indexes})

    async def create_index(self, request: web.Request) -> web.Response:
        db = await self.ctx.db(request)
        self.ctx.require_db_admin(request, db)  # an index is a design document: theirs to write, as in CouchDB
        body = await self.ctx.rules.body(request)
        index = body.get("index") if isinstance(body, dict) else None
        if not isinstance(index, dict) or not isinstance(index.get("fields"), list):
            raise HttpError(400, "bad_request", "the body must be {\"index\": {\"fields\": [...]}, ...}")
        if body.get("type", "json") != "json":
            raise HttpError(400, "bad_request", "only json indexes are supported")
        partial = index.get("partial_filter_selector", body.get("partial_filter_selector"))
        name, ddoc = body.get("name"), body.get("ddoc")
        if (name is not None and not isinstance(name, str)) or (ddoc is not None and not isinstance(ddoc, str)):
            raise HttpError(400, "bad_request", "name and ddoc are strings")
        answer = await asyncio.to_thread(db.createindex, index["fields"], name, partial, ddoc=ddoc, wait=False,
                                         python=False)
        return json_response(answer)

    async def drop_index(self, request: web.Request) -> web.Response:
        db = await self.ctx.db(request)
        self.ctx.require_db_admin(request, db)
        name = request.match_info["name"]
        ddoc = request.match_info["ddoc"]
        if not await asyncio.to_thread(db.dropindex, name, ddoc):
            raise HttpError(404, "not_found", f"no index {name!r} in _design/{ddoc}")
        return json_response({"ok": True})


def selector_filter(body: Any) -> Callable[[DocState], bool]:
    """The row filter of ``_changes?filter=_selector``: a test of the winning revision against the body's
    ``selector`` (a deleted record never matches, as in CouchDB)."""
    selector = body.get("selector") if isinstance(body, dict) else None
    if selector is None:
        raise HttpError(400, "bad_request", "Selector must be specified in POST payload")
    if not isinstance(selector, dict):
        raise HttpError(400, "bad_request", "Selector error: expected a JSON object")
    test = compile_selector(selector).test

    def keep(state: DocState) -> bool:
        doc = match_doc(state)
        return doc is not None and test(doc)

    return keep
