"""Runs the ASGI app under Granian."""

from __future__ import annotations

from api.settings import Settings


def serve(settings: Settings, host: str, port: int, workers: int) -> None:
    from granian import Granian
    from granian.constants import Interfaces, Loops

    Granian(
        "api.app:create_app",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        loop=Loops.auto,
        log_access=False,
    ).serve()
