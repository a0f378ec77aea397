"""The explorer's web app (Starlette): pages, static files and a small JSON/PNG API over an
:class:`~.service.ExploreService`.

Safety, as Jupyter does it: every request needs the access token (``?token=`` once, then a cookie
set by the first page; or an ``X-Token`` header); the ``Host`` header must be one the server was
started for (against DNS rebinding); images are addressed by their index in the given inputs,
never by a path; static files come from a fixed list; every response carries a
Content-Security-Policy that allows nothing but the app itself. Errors of the user's input (a
corrupt image, an unknown layer or class, a model that fails on one input) answer with a JSON
``{"error": ...}`` that the page shows, are printed on the terminal, and the app keeps running.
"""

from __future__ import annotations

import hashlib
import secrets
import sys
from collections.abc import Awaitable, Callable, Iterable
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from ..errors import GuidedBackpropError, ImageError
from ..visible import visible
from .service import ExploreService, Superseded, png_bytes

__all__ = ["CSP", "create_app"]

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
       "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
STATIC = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
Report = Callable[[str], None]


def _stderr(message: str) -> None:
    """One line on the terminal; a file name's control characters shown as escapes, never run."""
    print(f"explore: {visible(message)}", file=sys.stderr, flush=True)


def cookie_name(token: str) -> str:
    """The cookie of this server (cookies ignore ports: two explorers on one host keep theirs apart)."""
    return "gbp_explore_" + hashlib.sha256(token.encode()).hexdigest()[:12]


class _Guard(BaseHTTPMiddleware):
    """Host check, token check and the security headers of every response."""

    def __init__(self, app: Any, *, token: str, hosts: Iterable[str]) -> None:
        super().__init__(app)
        self.token = token
        self.hosts = {h.lower() for h in hosts}
        self.cookie = cookie_name(token)

    def _token_ok(self, given: str | None) -> bool:
        return given is not None and secrets.compare_digest(given.encode(), self.token.encode())

    async def dispatch(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        host = request.headers.get("host", "").lower()
        if self.hosts and host not in self.hosts:
            return _secure(PlainTextResponse(f"host {host!r} is not allowed", status_code=403))
        query_token = request.query_params.get("token")
        if self._token_ok(query_token):
            if request.method == "GET" and request.url.path == "/":  # the printed URL: drop the token from it
                response: Response = RedirectResponse("/", status_code=303)
            else:
                response = await call_next(request)
            response.set_cookie(self.cookie, self.token, httponly=True, samesite="strict")
            return _secure(response)
        if not (self._token_ok(request.cookies.get(self.cookie)) or self._token_ok(request.headers.get("x-token"))):
            return _secure(PlainTextResponse("forbidden: open the URL with the token that "
                                             "'guided-backprop explore' printed", status_code=403))
        return _secure(await call_next(request))


def _secure(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png")


def _int(request: Request, name: str, default: int | None = None) -> int:
    value = request.query_params.get(name) if name not in request.path_params else request.path_params[name]
    if value is None or value == "":
        if default is None:
            raise _BadRequest(f"missing parameter {name!r}")
        return default
    try:
        return int(value)
    except ValueError:
        raise _BadRequest(f"parameter {name!r} must be a whole number, got {str(value)[:80]!r}") from None


class _BadRequest(Exception):
    pass


def create_app(service: ExploreService, *, token: str, hosts: Iterable[str] = (), report: Report = _stderr
               ) -> Starlette:
    """The app serving ``service``: ``token`` is required on every request, ``hosts`` are the accepted
    ``Host`` headers (``host:port``; empty: any, for tests only), ``report`` prints errors on the terminal."""

    def fail(status: int, message: str) -> JSONResponse:
        report(message)
        return JSONResponse({"error": message}, status_code=status)

    def guarded(fn: Callable[[Request], Any]) -> Callable[[Request], Awaitable[Response]]:
        """Run ``fn`` in a worker thread (the model work blocks) and turn errors into messages."""

        async def endpoint(request: Request) -> Response:
            try:
                result = await run_in_threadpool(fn, request)
            except Superseded:
                # nothing to show, and no error: a newer request of the same client is answered instead
                return Response(status_code=204, headers={"X-Superseded": "1"})
            except _BadRequest as err:
                return fail(400, str(err))
            except ImageError as err:
                return fail(422, str(err))
            except GuidedBackpropError as err:
                return fail(400, str(err))
            except Exception as err:  # noqa: BLE001 - the user's model failed: say so, keep serving
                return fail(500, f"{type(err).__name__}: {err}")
            return result if isinstance(result, Response) else JSONResponse(result)

        return endpoint

    def client(request: Request) -> dict[str, Any]:
        key = request.query_params.get("client")
        return {"client": key[:64], "seq": _int(request, "seq", 0)} if key else {}

    def methods_of(request: Request) -> list[str]:
        names = [m for m in request.query_params.get("methods", "guided_backprop").split(",") if m]
        if not names:
            raise _BadRequest("choose at least one method")
        return names

    def target_of(request: Request) -> int:
        return service.class_index(request.query_params.get("class", "").strip() or _bad("missing parameter 'class'"))

    async def index(request: Request) -> Response:
        page = resources.files(__package__).joinpath("templates/index.html").read_text(encoding="utf-8")
        return Response(page, media_type="text/html; charset=utf-8")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return PlainTextResponse("not found", status_code=404)
        data = resources.files(__package__).joinpath(f"static/{name}").read_bytes()
        return Response(data, media_type=STATIC[name])

    def info(request: Request) -> Any:
        return service.info()

    def thumb(request: Request) -> Any:
        return _png(service.thumbnail(_int(request, "index")))

    def seen(request: Request) -> Any:
        index = _int(request, "index")
        return _png(service.run(lambda: service.picture(index)))

    def classes(request: Request) -> Any:
        index, k = _int(request, "index"), min(max(_int(request, "k", 5), 1), 20)
        return service.run(lambda: service.top_classes(index, k))

    def resolve_class(request: Request) -> Any:
        cls = target_of(request)
        return {"index": cls, "name": service.loaded.label(cls)}

    def panel(request: Request) -> Any:
        with service.timed("panel request (all of the above)"):
            index, methods = _int(request, "image"), methods_of(request)
            cls, smooth = target_of(request), request.query_params.get("smooth") == "1"

            def draw() -> bytes:  # encoded under the request too: the background waits until it is sent
                picture = service.panel(index, cls, methods, smooth)
                with service.timed("PNG encoding"):
                    return png_bytes(picture)

            return _png(service.run(draw, **client(request)))

    def map_npy(request: Request) -> Any:
        index, smooth = _int(request, "image"), request.query_params.get("smooth") == "1"
        method, cls = methods_of(request)[0], target_of(request)
        maps = service.run(lambda: service.maps(index, cls, [method], smooth))
        return Response(_npy(next(iter(maps.values()))), media_type="application/octet-stream")

    def command(request: Request) -> Any:
        index, methods, smooth = _int(request, "image"), methods_of(request), request.query_params.get("smooth") == "1"
        return {"command": service.command(index, target_of(request), methods, smooth)}

    def layers(request: Request) -> Any:
        index = _int(request, "image") if request.query_params.get("image") else None
        rows = service.run(lambda: service.unit_layers(index))
        return [{"name": r.name, "type": r.type, "shape": r.shape_text, "field": r.field_text, "spatial": r.spatial}
                for r in rows]

    def channels(request: Request) -> Any:
        index, layer = _int(request, "image"), request.query_params.get("layer", "")
        ranking = service.run(lambda: service.channel_ranking(index, layer), **client(request))
        act = service.activations(index, layer)
        return {"layer": layer, "shape": list(act.shape), "channels": ranking}

    def activation(request: Request) -> Any:
        index, layer, channel = _int(request, "image"), request.query_params.get("layer", ""), _int(request, "channel")
        return _png(png_bytes(service.run(lambda: service.activation_picture(index, layer, channel))))

    def unit(request: Request) -> Any:
        index, layer, channel = _int(request, "image"), request.query_params.get("layer", ""), _int(request, "channel")
        has_pos = request.query_params.get("y") not in (None, "")
        position = (_int(request, "y"), _int(request, "x")) if has_pos else None
        picture = service.run(lambda: service.unit_panel(index, layer, channel, position), **client(request))
        return _png(png_bytes(picture))

    def top_images(request: Request) -> Any:
        layer, channel = request.query_params.get("layer", ""), _int(request, "channel")
        return service.top_images(layer, channel).status()

    def top_picture(request: Request) -> Any:
        layer, channel = request.query_params.get("layer", ""), _int(request, "channel")
        job = service.top_images(layer, channel, start=False)
        if job.picture is None:
            raise _BadRequest(f"the top images of {layer} channel {channel} are not ready ({job.state})")
        return _png(job.picture)

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

    routes = [
        Route("/", index),
        Route("/favicon.ico", favicon),
        Route("/static/{name}", static),
        Route("/api/info", guarded(info)),
        Route("/api/images/{index}/thumb.png", guarded(thumb)),
        Route("/api/images/{index}/input.png", guarded(seen)),
        Route("/api/images/{index}/classes", guarded(classes)),
        Route("/api/class", guarded(resolve_class)),
        Route("/api/panel.png", guarded(panel)),
        Route("/api/map.npy", guarded(map_npy)),
        Route("/api/command", guarded(command)),
        Route("/api/layers", guarded(layers)),
        Route("/api/channels", guarded(channels)),
        Route("/api/activation.png", guarded(activation)),
        Route("/api/unit.png", guarded(unit)),
        Route("/api/top-images", guarded(top_images)),
        Route("/api/top-images.png", guarded(top_picture)),
    ]
    return Starlette(routes=routes, middleware=[Middleware(_Guard, token=token, hosts=list(hosts))])


def _bad(message: str) -> Any:
    raise _BadRequest(message)


def _npy(a: Any) -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.asarray(a, dtype=np.float32))
    return buf.getvalue()


def new_token() -> str:
    """A fresh access token (URL-safe, 192 bits)."""
    return secrets.token_urlsafe(24)

