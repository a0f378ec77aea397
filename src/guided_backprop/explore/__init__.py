"""``guided-backprop explore``: a local web app that computes maps on demand.

:class:`~.service.ExploreService` does the computing (the engine, one lock, per-image caches),
:func:`~.app.create_app` is the Starlette app over it (token, Host check, CSP), and
:func:`~.server.serve` binds 127.0.0.1, prints the URL and serves until Ctrl-C. The page
(``templates/index.html``) and its script and style (``static/``) are package data: nothing is
fetched from anywhere else.
"""

from __future__ import annotations

from .app import create_app, new_token
from .server import serve
from .service import ExploreService, Superseded

__all__ = ["ExploreService", "Superseded", "create_app", "new_token", "serve"]
