"""Starting the explorer: bind, print one URL with the token, open the browser, serve until Ctrl-C."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import webbrowser
from collections.abc import Callable, Iterator
from typing import Any

from .app import create_app, new_token
from .service import ExploreService

__all__ = ["LOCAL_HOSTS", "allowed_hosts", "bind", "running", "serve"]

LOCAL_HOSTS = ("127.0.0.1", "localhost")


WILDCARDS = ("0.0.0.0", "::")


def _machine_names() -> list[str]:
    """This machine's names and addresses (what a browser on the network may put in ``Host``)."""
    names = [socket.gethostname(), socket.getfqdn()]
    try:
        names += [str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None)]
    except OSError:  # no resolvable host name: its name alone
        pass
    return list(dict.fromkeys(n for n in names if n))


def allowed_hosts(host: str, port: int) -> list[str]:
    """The ``Host`` headers the server accepts, with the port: the address it listens on (``localhost``
    too for the loopback address; the machine's names and addresses for all interfaces, ``0.0.0.0`` or
    ``::``); never a name a DNS-rebinding page could bring."""
    if host in LOCAL_HOSTS:
        names = list(LOCAL_HOSTS)
    elif host in WILDCARDS:
        names = [*LOCAL_HOSTS, "::1", *_machine_names()]
    else:
        names = [host]
    return [f"[{name}]:{port}" if ":" in name else f"{name}:{port}" for name in names]


def url_host(host: str) -> str:
    """The host part of the printed URL: the machine's name for all interfaces, brackets for IPv6."""
    if host in WILDCARDS:
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free port chosen by the system)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


def serve(service: ExploreService, *, host: str = "127.0.0.1", port: int = 0, open_browser: bool = True,
          token: str | None = None, echo: Callable[[str], None] = print, ready: Callable[[str], Any] | None = None
          ) -> None:
    """Serve the explorer until interrupted (Ctrl-C stops it cleanly: uvicorn finishes the requests
    under way and closes the socket). ``echo`` prints the URL; ``ready(url)`` is called once serving."""
    import uvicorn

    token = token or new_token()
    sock = bind(host, port)
    port = sock.getsockname()[1]
    url = f"http://{url_host(host)}:{port}/?token={token}"
    app = create_app(service, token=token, hosts=allowed_hosts(host, port))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    echo(f"explorer of {len(service.paths)} image{'s' if len(service.paths) != 1 else ''} with model "
         f"{service.loaded.name}; open\n    {url}\n(Ctrl-C stops it)")

    def when_ready() -> None:
        while not server.started and not server.should_exit:
            threading.Event().wait(0.05)
        if server.started:
            if open_browser:
                webbrowser.open(url)
            if ready is not None:
                ready(url)

    threading.Thread(target=service.warm_up, daemon=True, name="explore-warm-up").start()
    threading.Thread(target=when_ready, daemon=True, name="explore-ready").start()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


@contextlib.contextmanager
def running(service: ExploreService, *, token: str, report: Callable[[str], None] | None = None) -> Iterator[str]:
    """The app over ``service`` served on 127.0.0.1 (a free port) in a background thread, for tests,
    benchmarks and notebooks; yields the base URL (``http://127.0.0.1:PORT``, open it with ``/?token=...``)
    and stops the server when the block ends."""
    import uvicorn

    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    app = create_app(service, token=token, hosts=allowed_hosts("127.0.0.1", port),
                     **({"report": report} if report is not None else {}))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="explore-server")
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
