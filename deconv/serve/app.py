"""The web app of ``deconv serve``: routes only, wiring :class:`~deconv.serve.session.Session` to HTTP.

Every request needs the token, as the query parameter ``token=``, the header ``Authorization: token T`` or the
cookie that opening the top9 run's report with the token sets (so that its relative links work and the live page
opens from them); without it: 403. Errors are JSON ``{"error": "<one line>"}`` with a 4xx status. Torch work runs in a
thread pool under one lock, so the server answers other requests while a projection runs.

The routes come in groups, each a function of the :class:`Context` they share: the page, the dataset
(browsing, uploads), one image (its picture, patches, classes), the feature maps, the projections and
the top9 run's records.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import DeconvError, SelectionError, one_line
from ..selection import Position
from . import pictures
from .records import Run
from .session import DIGITS, Session, natural

__all__ = ["create_app", "MAX_UPLOAD_BYTES"]

MAX_UPLOAD_BYTES = 20 * 2**20
HEADERS = {  # the page loads nothing from elsewhere and never sends its URL (with the token) anywhere
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src blob:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}


COOKIE = "deconv_token"  # set by the report's pages (HttpOnly, SameSite=Strict): the report's links carry no token
REPORT_HEADERS = {  # the static report: its own images and stylesheet, inline PNGs, its sorting and live-link scripts
    **HEADERS,
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": one_line(message)}, status, headers=HEADERS)


class Guard:
    """Refuses (403) every HTTP request that does not carry ``token``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            request = Request(scope)
            header = request.headers.get("authorization", "")
            given = (
                request.query_params.get("token")
                or (header[6:] if header.lower().startswith("token ") else "")
                or request.cookies.get(COOKIE, "")
            )
            if not secrets.compare_digest(given.encode(), self.token):
                refusal = _error(403, "missing or wrong token: add ?token=... from the URL deconv serve printed")
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


@dataclass(frozen=True)
class Context:
    """What the route groups share: the ``session``, the top9 ``run`` (or ``None``) and the one lock."""

    session: Session
    run: Run | None
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def work(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the thread pool, under the lock."""

        def locked() -> Any:
            with self.lock:
                return fn(*args)

        return await run_in_threadpool(locked)

    def records(self) -> Run:
        """The top9 run, or 404 where the server has none."""
        if self.run is None:
            raise HTTPException(404, "no top9 run: start deconv serve with --run DIR")
        return self.run


def _text(request: Request, name: str, default: str | None = None) -> str:
    value = request.query_params.get(name, default)
    if value is None:
        raise HTTPException(400, f"missing query parameter {name!r}")
    return value


def _int(request: Request, name: str, default: int | None = None) -> int:
    text = request.query_params.get(name)
    if text is None and default is not None:
        return default
    text = _text(request, name)
    if not natural(text.removeprefix("-")):
        raise HTTPException(
            400, f"query parameter {name!r} must be an integer of at most {DIGITS} digits, got {text!r}"
        )
    return int(text)


def _optional_int(request: Request, name: str) -> int | None:
    return None if request.query_params.get(name) is None else _int(request, name)


def _position(request: Request) -> Position:
    """Where a projection starts: the whole map with ``map=``, ``(y, x)``, or ``None`` for the strongest."""
    y, x = _optional_int(request, "y"), _optional_int(request, "x")
    if request.query_params.get("map") is not None:
        if y is not None or x is not None:
            raise HTTPException(400, "give map (the whole map) or y and x (one position), not both")
        return "map"
    if (y is None) != (x is None):
        raise HTTPException(400, "give both y and x (or neither, for the strongest activation)")
    return None if y is None else (y, x)


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers=HEADERS)


def _json(data: Any) -> JSONResponse:
    return JSONResponse(data, headers=HEADERS)


def _page() -> list[Route]:
    """``/``: the page."""
    page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers=HEADERS)

    return [Route("/", index)]


def _dataset(context: Context) -> list[Route]:
    """The dataset and uploads: what the dataset holds, browsing it (by class), uploading an image."""
    session, work = context.session, context.work

    async def dataset(request: Request) -> Response:
        return _json(
            {
                "images": len(session.dataset),
                "image_shape": session.image_shape,
                "classes": session.classes,
                "run": context.run is not None,
                "max_upload_bytes": MAX_UPLOAD_BYTES,
            }
        )

    async def images(request: Request) -> Response:
        label, start, count = _optional_int(request, "class"), _int(request, "start", 0), _int(request, "count", 24)
        if start < 0 or not 1 <= count <= 200:
            raise HTTPException(400, f"start must be >= 0 and count in 1..200, got start={start}, count={count}")
        found = await work(
            lambda: [{"image": str(i), "label": session.label(str(i))} for i in session.find(start, count, label)]
        )
        return _json(found)

    async def upload(request: Request) -> Response:
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"uploaded file is larger than {MAX_UPLOAD_BYTES // 2**20} MB")
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_UPLOAD_BYTES:
                raise HTTPException(413, f"uploaded file is larger than {MAX_UPLOAD_BYTES // 2**20} MB")
        if not data:
            raise HTTPException(400, "empty upload: send the image file as the request body")
        return _json({"image": await work(session.upload, bytes(data))})

    return [
        Route("/api/dataset", dataset),
        Route("/api/images", images),
        Route("/api/upload", upload, methods=["POST"]),
    ]


def _images(context: Context) -> list[Route]:
    """One image: as PNG (with an activation's receptive-field box), the patch of that box, its classes."""
    session, work = context.session, context.work

    async def image_png(request: Request) -> Response:
        ref = _text(request, "image")
        layer = request.query_params.get("layer")

        def draw() -> bytes:
            box = None if layer is None else session.patch(ref, layer, _int(request, "y"), _int(request, "x")).box
            image = session.image(ref).image
            return pictures.picture(image, session.preprocess.denormalize, pictures.factor(image.shape[-2], 256), box)

        return _png(await work(draw))

    async def patch_png(request: Request) -> Response:
        ref, layer, y, x = _text(request, "image"), _text(request, "layer"), _int(request, "y"), _int(request, "x")

        def draw() -> bytes:
            p = session.patch(ref, layer, y, x)
            scale = pictures.factor(max(p.pixels.shape[-2:]), 256)
            return pictures.patch(p.pixels, p.inside, session.preprocess.denormalize, scale)

        return _png(await work(draw))

    async def classes(request: Request) -> Response:
        ref = _text(request, "image")
        return _json(await work(session.classes_of, ref, _int(request, "top", 5)))

    return [
        Route("/api/image.png", image_png),
        Route("/api/patch.png", patch_png),
        Route("/api/classes", classes),
    ]


def _maps(context: Context) -> list[Route]:
    """The model's layers and an image's feature maps: their layout, their grid and one map as PNG."""
    session, work = context.session, context.work

    async def layers(request: Request) -> Response:
        return _json({"layers": await work(session.layers), "rules": list(session.rules)})

    async def maps(request: Request) -> Response:
        ref, layer = _text(request, "image"), _text(request, "layer")

        def layout() -> dict:
            m = session.maps(ref, layer)
            columns, (th, tw) = pictures.layout(m)
            return {
                "layer": layer,
                "channels": m.channels.tolist(),
                "peaks": m.peaks.tolist(),
                "vectors": m.vectors,
                "map_shape": list(m.maps.shape[1:]),
                "columns": columns,
                "tile": [th, tw],
                "gap": pictures.GAP,
                "top9": [] if context.run is None else context.run.channels(layer),
            }

        return _json(await work(layout))

    async def maps_png(request: Request) -> Response:
        ref, layer = _text(request, "image"), _text(request, "layer")
        return _png(await work(lambda: pictures.grid(session.maps(ref, layer))))

    async def map_png(request: Request) -> Response:
        ref, layer, channel = _text(request, "image"), _text(request, "layer"), _int(request, "channel")

        def draw() -> bytes:
            values = session.feature_map(ref, layer, channel)
            return pictures.feature_map(values, pictures.factor(max(values.shape), 256))

        return _png(await work(draw))

    return [
        Route("/api/layers", layers),
        Route("/api/maps", maps),
        Route("/api/maps.png", maps_png),
        Route("/api/map.png", map_png),
    ]


def _projections(context: Context) -> list[Route]:
    """An activation, a whole feature map or a class projected to pixel space, as PNG."""
    session, work = context.session, context.work

    async def project_png(request: Request) -> Response:
        ref = _text(request, "image")
        rule = request.query_params.get("rule")
        order = session.preprocess.channel_order
        target = _optional_int(request, "target_class")
        if target is not None:
            given = [name for name in ("layer", "channel", "map", "y", "x") if name in request.query_params]
            if given:
                raise HTTPException(400, f"target_class projects a class, not a layer: leave out {', '.join(given)}")
            return _png(
                await work(lambda: pictures.projection(session.project(ref, target_class=target, rule=rule), order))
            )
        layer, channel = _text(request, "layer"), _int(request, "channel")
        position = _position(request)
        return _png(
            await work(lambda: pictures.projection(session.project(ref, layer, channel, position, rule=rule), order))
        )

    return [Route("/api/project.png", project_png)]


def _records(context: Context) -> list[Route]:
    """The top9 run's records of a channel and its panel cut from the run's sheet (404 without a run)."""

    async def top9(request: Request) -> Response:
        run = context.records()
        return _json(run.of(_text(request, "layer"), _int(request, "channel")))

    async def top9_png(request: Request) -> Response:
        run = context.records()
        layer, channel = _text(request, "layer"), _int(request, "channel")
        return _png(await context.work(lambda: pictures.png(run.panel(layer, channel))))

    async def report(request: Request) -> Response:
        """``/run/NAME``: a file of the run's static report; its unit pages link each entry to the live page."""
        run = context.records()
        try:
            data, kind = await run_in_threadpool(run.report_file, request.path_params["name"])
        except SelectionError as error:
            raise HTTPException(404, str(error)) from None
        response = Response(data, media_type=kind, headers=REPORT_HEADERS)
        token = request.query_params.get("token")
        if token:  # the Guard has checked it: the report's relative links (and the live page) go on with the cookie
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
        return response

    return [Route("/api/top9", top9), Route("/api/top9.png", top9_png), Route("/run/{name:path}", report)]


async def _deconv_error(request: Request, error: Exception) -> Response:
    return _error(400, str(error))


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    if error.status_code in (404, 405) and error.detail in ("Not Found", "Method Not Allowed"):  # the router's own
        return _error(
            error.status_code, f"no {request.method} {request.url.path} here: the API is listed in docs/serve.md"
        )
    return _error(error.status_code, error.detail)


def create_app(session: Session, token: str, run: Run | None = None) -> Starlette:
    """The app serving ``session`` (and the top9 ``run``'s panels) to requests that carry ``token``."""
    context = Context(session, run)
    return Starlette(
        routes=[
            *_page(),
            *_dataset(context),
            *_images(context),
            *_maps(context),
            *_projections(context),
            *_records(context),
        ],
        middleware=[Middleware(Guard, token=token)],
        exception_handlers={DeconvError: _deconv_error, HTTPException: _http_error},
    )
