"""``deconv serve``: a local web app to probe any activation of any image live (needs ``deconv[serve]``)."""

from __future__ import annotations

import ipaddress
import secrets
import socket

from ..errors import ConfigError, DeconvError
from ..mirror import build_mirror
from . import command
from .common import Data, Model, dataset_from, model_from, preprocess_from
from .config import Option, Settings, with_options


@with_options(
    Option(
        "run",
        str,
        "",
        "a `deconv top9` run folder of the same model and data: each channel links to its top-9 panel",
    ),
    Option("port", int, 8765, "the port to listen on (0: any free port)"),
    Option(
        "host", str, "127.0.0.1", "the address to listen on; anything but loopback exposes the model to the network"
    ),
)
class ServeSettings(Settings):
    """The model and data to probe, the top-9 run to link to, where to listen."""

    model: Model
    data: Data
    run: str
    port: int
    host: str


OPTIONS = ServeSettings.options


def _socket(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or ``ConfigError`` naming them."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as error:
        raise ConfigError(f"cannot listen on host {host!r} port {port} ({error.strerror or error})") from None


@command(
    "serve",
    "a local web app: pick an image, a layer, a channel and a position, and see its projection live",
    ServeSettings,
)
def run(settings: ServeSettings) -> int:
    try:
        import uvicorn

        from ..serve.app import create_app
    except ImportError as error:
        raise DeconvError(
            f"deconv serve needs the web packages ({error.name} is missing): pip install 'deconv[serve]'"
        ) from None
    from ..serve.records import Run
    from ..serve.session import Session

    if not 0 <= settings.port <= 65535:
        raise ConfigError(f"key 'port' must be in 0..65535, got {settings.port}")
    model = model_from(settings.model)
    preprocess = preprocess_from(settings.data, model, settings.model.embedded)
    dataset = dataset_from(settings.data, preprocess)
    mirror = build_mirror(model, shape=lambda: tuple(dataset[0][0].shape))
    session = Session(mirror, dataset, preprocess, getattr(model, "classes", None))
    records = Run(settings.run, mirror.layer_names, len(dataset)) if settings.run else None
    token = secrets.token_urlsafe(32)
    listening = _socket(settings.host, settings.port)
    host, port = listening.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"deconv serve: open http://{shown}:{port}/?token={token}  (Ctrl-C to stop)", flush=True)
    if not ipaddress.ip_address(host).is_loopback:
        print(
            f"deconv serve: warning: listening on {host}, reachable from other machines; "
            "anyone with the token can use it",
            flush=True,
        )
    server = uvicorn.Server(uvicorn.Config(create_app(session, token, records), log_level="warning", lifespan="off"))
    server.run(sockets=[listening])
    return 0
