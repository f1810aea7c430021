"""The embedded default's S3: moto's S3 API server, started in this process on a loopback port."""

from __future__ import annotations

import logging
import socket

log = logging.getLogger(__name__)


class EmbeddedS3:
    def __init__(self, port: int = 0) -> None:
        self._port = port or _free_port()
        self._server: object | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> str:
        # Imported here: moto is heavy, and only the embedded default needs it.
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self._port, verbose=False)
        server.start()
        self._server = server
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        return self.endpoint_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()  # type: ignore[attr-defined]
            self._server = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
