"""HTTP API (FastAPI + uvicorn) over a :class:`Recommender` (DESIGN §8).

Endpoints (OpenAPI docs at ``/docs``, schema at ``/openapi.json``):

* ``GET /health``: status, catalogue size, index kind and parameters, the bundle's
  name and fingerprint (never a filesystem path).
* ``GET /recommend?user_id=&k=[&exclude=ID...][&feature=name:label...]``: top-K
  for one user. User and item ids are the dataset's **original** ids. An unknown
  user gets the cold-start list (see :mod:`.recommender`; ``feature`` gives
  demographics such as ``gender:F``) flagged ``"cold_start": true``.
* ``POST /recommend``: ``{"k": 10, "users": [{"user_id": .., "exclude": [..],
  "features": {..}}, ..]}``; more than ``serving.max_batch`` users -> 413, a body
  over :data:`MAX_BODY_BYTES` -> 413.
* ``GET /items/{item_id}``: title, genres, year, train popularity, tail flag.
* ``GET /explain?user_id=&item_id=``: s(u, i) and its exact parts (two-tower,
  genre-agent boost, tail boost, familiar-item correction), which sum to the score.

Bad input never reaches the model: k outside [1, ``serving.max_k``], a non-integer
k, malformed JSON, a non-finite number (``NaN``, ``Infinity``, ``1e400``: not JSON),
unknown demographics -> 422 with a reason; unknown items in /items and /explain ->
404; unknown users in /explain -> 404 (cold-start lists are not model scores); an
invalid Content-Length -> 400; a body that cannot be decoded -> 400. Exclusions
naming unknown items are ignored (a client may know a newer catalogue).

Every error body has one shape, :class:`ErrorOut`: ``{"detail": "<reason>"}``, plus
``"errors": [{"loc": [...], "msg": ..., "type": ...}]`` for request validation
(422). Each route documents in the OpenAPI schema every status it can send.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import socket
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictInt, StrictStr
from uvicorn.protocols.http.h11_impl import H11Protocol

from marl_two_tower.config import ServingConfig
from marl_two_tower.serving.recommender import RecList, Recommender, UnknownFeature

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024  # a full max_batch with long exclusion lists fits easily
MAX_EXCLUDE = 10_000  # per-user exclusions in one request
MAX_ID_LEN = 256

# JSON ids: numbers or strings, never coerced from booleans or floats
IdType = StrictInt | StrictStr


class UserRequest(BaseModel):
    """One user of a batch request."""

    user_id: IdType = Field(description="original user id (unknown ids get the cold-start list)")
    exclude: list[IdType] = Field(default_factory=list, max_length=MAX_EXCLUDE,
                                  description="item ids never to return for this user")
    features: dict[str, str] | None = Field(
        default=None, description="demographics for the cold-start list, e.g. {'gender': 'F'}")


class BatchRequest(BaseModel):
    """``POST /recommend`` body."""

    users: list[UserRequest] = Field(min_length=1, description="users to serve (at most max_batch)")
    k: StrictInt = Field(default=10, ge=1, description="list length (at most max_k)")


class ItemOut(BaseModel):
    item_id: IdType
    score: float
    title: str | None = None
    tail: bool


class RecommendOut(BaseModel):
    user_id: IdType
    k: int
    cold_start: bool = Field(description="true: unknown user, non-personalised cold-start list")
    items: list[ItemOut]


class BatchOut(BaseModel):
    k: int
    results: list[RecommendOut]


class ExplainOut(BaseModel):
    user_id: IdType
    item_id: IdType
    score: float = Field(description="s(u, i) as served; equals the sum of the parts")
    parts: dict[str, float]
    seen: bool = Field(description="the item is in the user's seen set (never served)")


class FieldError(BaseModel):
    """One failed check of a request field."""

    loc: list[str | int] = Field(description="where: ['body', 'users', 0, 'user_id'], ['query', 'k']")
    msg: str
    type: str


class ErrorOut(BaseModel):
    """The body of every error response (400, 404, 413, 422)."""

    detail: str = Field(description="the reason, for people")
    errors: list[FieldError] | None = Field(
        default=None, description="request validation (422): each failed field")


class BundleInfo(BaseModel):
    name: str = Field(description="bundle folder (or checkpoint file) name, without its path")
    fingerprint: str = Field(description="16 hex digits identifying the served vectors and config")
    dataset: str
    data_fingerprint: str


class HealthOut(BaseModel):
    status: str
    bundle: BundleInfo
    n_users: int
    n_items: int
    index: dict[str, Any]
    seen: str
    familiar_rescoring: bool
    exposure: dict[str, Any]
    limits: dict[str, int]
    cold_start: dict[str, Any]


class ItemInfoOut(BaseModel):
    item_id: IdType
    title: str | None
    genres: list[str]
    year: int | None
    popularity: int
    tail: bool


def _errors(description: str, *statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorOut, "description": description if s == 404 else _STATUS[s]}
            for s in statuses}


_STATUS = {400: "invalid Content-Length header, or a body that cannot be decoded",
           413: "request body over the size limit, or a batch over serving.max_batch",
           422: "invalid request: the reason in `detail`, each failed field in `errors`"}
# every request passes BodyLimit, so every route can answer 400 and 413
COMMON = _errors("", 400, 413)


def bundle_fingerprint(b: Any) -> str:
    """16 hex digits of SHA-256 over the data fingerprint, the stored config (serving
    settings aside) and the item vectors: equal for equal bundles, and no path in it."""
    cfg = b.cfg.to_dict()
    cfg.pop("serving", None)
    h = hashlib.sha256(f"{b.data_fingerprint}\n{json.dumps(cfg, sort_keys=True)}\n".encode())
    h.update(np.ascontiguousarray(b.item_vectors, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with a readable reason; never echoes the input (a NaN in it cannot be
    written as JSON, which is what turned these into 500s)."""
    errors = []
    for e in exc.errors():
        loc = [x if isinstance(x, (str, int)) else str(x) for x in e.get("loc", ())]
        value = e.get("input")
        if isinstance(value, float) and not math.isfinite(value):
            msg, kind = "non-finite number (NaN, Infinity or out of range): not valid JSON", "non_finite"
        else:
            msg, kind = str(e.get("msg", "invalid value")), str(e.get("type", "value_error"))
        errors.append({"loc": loc, "msg": msg, "type": kind})
    detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors) or "invalid request"
    return JSONResponse({"detail": detail, "errors": errors}, status_code=422)


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``max_bytes``, by its declared
    Content-Length or, for chunked bodies, as soon as the bytes received exceed it.
    (A plain ASGI class: Starlette's ``@app.middleware`` costs ~0.3 ms per request.)"""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                return await self._reply(send, 400, "invalid Content-Length header")
            if too_big:
                return await self._reply(send, 413, f"request body of {int(declared)} bytes exceeds "
                                                    f"the limit of {self.max_bytes}")
            return await self.app(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:  # raised inside the endpoint's body read -> a 413 reply
                    raise HTTPException(413, f"request body exceeds the limit of {self.max_bytes} bytes")
            return msg

        await self.app(scope, limited_receive, send)

    @staticmethod
    async def _reply(send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _parse_features(raw: list[str]) -> dict[str, str]:
    out = {}
    for f in raw:
        name, sep, label = f.partition(":")
        if not sep or not name.strip() or not label.strip():
            raise HTTPException(422, f"feature {f!r}: expected name:label, e.g. gender:F")
        out[name.strip()] = label.strip()
    return out


def create_app(rec: Recommender, cfg: ServingConfig | None = None,
               name: str | None = None) -> FastAPI:
    """The FastAPI application serving ``rec``; ``name`` is what ``/health`` calls the
    bundle (default: the file name of the bundle's source, without its folders)."""
    cfg = cfg or rec.cfg
    b = rec.bundle
    titles = b.item_titles
    tail = b.tail_mask.astype(bool)
    app = FastAPI(title="marl-two-tower recommender",
                  description=__doc__.split("\n\n", 1)[1] if __doc__ else "", version="1",
                  exception_handlers={RequestValidationError: _validation_error})
    info = {"name": name or (Path(b.source).name if b.source else b.dataset_name),
            "fingerprint": bundle_fingerprint(b), "dataset": b.dataset_name,
            "data_fingerprint": b.data_fingerprint}

    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    # The list endpoints return a JSONResponse built from plain dicts: their response
    # models document the schema (OpenAPI) without re-validating our own output.

    def check_k(k: int) -> None:
        if k > cfg.max_k:
            raise HTTPException(422, f"k={k} exceeds the limit max_k={cfg.max_k}")

    def items_out(lst: RecList) -> list[dict[str, Any]]:
        return [{"item_id": rec.item_ids[i], "score": float(s),
                 "title": titles[i] if titles is not None else None, "tail": bool(tail[i])}
                for i, s in zip(lst.items.tolist(), lst.scores.tolist(), strict=True)]

    def exclusions(ids: list[Any]) -> np.ndarray | None:
        if not ids:
            return None
        idx = [rec.item_index(x) for x in ids]
        return np.asarray([i for i in idx if i is not None], dtype=np.int64)

    def serve(requests: list[tuple[Any, list[Any], dict[str, str] | None]], k: int) -> list[dict[str, Any]]:
        """Known users in one batched search, unknown ones from the cold-start list."""
        out: list[dict[str, Any] | None] = [None] * len(requests)
        known, known_pos, known_ex = [], [], []
        for pos, (uid, excl, feats) in enumerate(requests):
            u = rec.user_index(uid)
            ex = exclusions(excl)
            if u is None:
                try:
                    lst = rec.cold_start(k, feats, ex)
                except UnknownFeature as e:
                    raise HTTPException(422, str(e)) from e
                out[pos] = {"user_id": uid, "k": k, "cold_start": True, "items": items_out(lst)}
            else:
                known.append(u)
                known_pos.append(pos)
                known_ex.append(ex)
        if known:
            for pos, u, lst in zip(known_pos, known, rec.recommend(known, k, known_ex), strict=True):
                out[pos] = {"user_id": rec.user_ids[u], "k": k, "cold_start": False,
                            "items": items_out(lst)}
        return out  # type: ignore[return-value]

    @app.get("/health", response_model=HealthOut, responses=COMMON)
    async def health() -> dict[str, Any]:
        """Liveness and what is being served."""
        return {"status": "ok", "bundle": info, "n_users": b.n_users, "n_items": b.n_items,
                "index": rec.index.describe(), "seen": cfg.seen,
                "familiar_rescoring": rec.overrides_fn is not None,
                "exposure": rec.exposure_info(),
                "limits": {"max_k": cfg.max_k, "max_batch": cfg.max_batch,
                           "max_body_bytes": MAX_BODY_BYTES},
                "cold_start": {"beta": cfg.cold_start_beta, "tail_quota": cfg.cold_start_tail_quota,
                               "prior": cfg.cold_start_prior,
                               "features": {f: rec.cold.labels.get(f, []) for f in rec.cold.counts}}}

    @app.get("/recommend", response_model=RecommendOut, responses=COMMON | _errors("", 422))
    async def recommend(
        user_id: Annotated[str, Query(min_length=1, max_length=MAX_ID_LEN,
                                      description="original user id")],
        k: Annotated[int, Query(ge=1, description="list length, 1..max_k")] = 10,
        exclude: Annotated[list[str] | None, Query(max_length=MAX_EXCLUDE,
                                                   description="item ids to exclude (repeatable)")] = None,
        feature: Annotated[list[str] | None, Query(
            max_length=16, description="cold-start demographics name:label (repeatable)")] = None,
    ) -> JSONResponse:
        """Top-k items for one user (cold-start list for an unknown user)."""
        check_k(k)
        return JSONResponse(serve([(user_id, exclude or [], _parse_features(feature or []))], k)[0])

    @app.post("/recommend", response_model=BatchOut, responses=COMMON | _errors("", 422))
    async def recommend_batch(body: BatchRequest) -> JSONResponse:
        """Top-k items for a batch of users, with optional per-user exclusions."""
        check_k(body.k)
        if len(body.users) > cfg.max_batch:
            raise HTTPException(413, f"batch of {len(body.users)} users exceeds the limit "
                                     f"max_batch={cfg.max_batch}")
        for r in body.users:
            if len(str(r.user_id)) > MAX_ID_LEN:
                raise HTTPException(422, f"user_id longer than {MAX_ID_LEN} characters")
        reqs = [(r.user_id, r.exclude, r.features) for r in body.users]
        return JSONResponse({"k": body.k, "results": serve(reqs, body.k)})

    @app.get("/items/{item_id}", response_model=ItemInfoOut,
             responses=COMMON | _errors("unknown item", 404) | _errors("", 422))
    async def item(item_id: str) -> dict[str, Any]:
        """Catalogue entry of an item (original id)."""
        i = rec.item_index(item_id)
        if i is None:
            raise HTTPException(404, f"unknown item {item_id!r}")
        return {"item_id": rec.item_ids[i], "title": titles[i] if titles is not None else None,
                "genres": [g for g, on in zip(b.genre_names, b.item_genres[i], strict=True) if on],
                "year": int(b.item_year[i]) or None, "popularity": int(b.item_pop[i]),
                "tail": bool(tail[i])}

    @app.get("/explain", response_model=ExplainOut,
             responses=COMMON | _errors("unknown user or item", 404) | _errors("", 422))
    async def explain(
        user_id: Annotated[str, Query(min_length=1, max_length=MAX_ID_LEN)],
        item_id: Annotated[str, Query(min_length=1, max_length=MAX_ID_LEN)],
    ) -> dict[str, Any]:
        """The exact decomposition of s(user, item) into its parts."""
        u = rec.user_index(user_id)
        if u is None:
            raise HTTPException(404, f"unknown user {user_id!r}: unknown users get the cold-start "
                                     "list, which has no model score to explain")
        i = rec.item_index(item_id)
        if i is None:
            raise HTTPException(404, f"unknown item {item_id!r}")
        ex = rec.explain(u, i)
        seen = bool(np.any(rec.seen(u) == i))
        return {"user_id": rec.user_ids[u], "item_id": rec.item_ids[i], **ex, "seen": seen}

    return app


class NoDelayH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with TCP_NODELAY set on every connection (``workers > 1``).

    With several workers uvicorn binds the listening socket itself as
    ``socket.socket(family)`` (protocol number 0), and asyncio sets TCP_NODELAY only on
    sockets whose protocol is IPPROTO_TCP: the workers' connections kept Nagle's
    algorithm, and a response written in two parts waited for the client's delayed
    ACK, 40 ms per keep-alive request (1,490 -> 705 requests/s at c = 32)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


def run(app: FastAPI | str, host: str = "127.0.0.1", port: int = 8000, access_log: bool = False,
        workers: int = 1) -> None:
    """Serve ``app`` with uvicorn (loopback by default; a wider bind is logged). With
    ``workers > 1``, ``app`` is the ``"module:factory"`` string each worker process
    calls to build its app."""
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding to %s: the API is reachable from other machines", host)
    if workers > 1:
        uvicorn.run(app, host=host, port=port, access_log=access_log, log_level="info",
                    workers=workers, factory=True, http=NoDelayH11Protocol)
        return
    uvicorn.run(app, host=host, port=port, access_log=access_log, log_level="info")
