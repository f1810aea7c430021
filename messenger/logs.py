"""Log lines as `time level logger message key=value ...`, with the structured extras a caller passed."""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = " ".join(f"{key}={value!r}" for key, value in vars(record).items() if key not in _STANDARD)
        return f"{line} {extras}" if extras else line


class MalformedRequests(logging.Filter):
    """aiohttp logs a request it cannot parse (a NUL in a header, a broken request line) as an ERROR
    with a traceback. That is the client's fault, answered 400, and on the internet it is routine:
    one INFO line says it without drowning real tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError) and error.code < 500:
            record.msg = f"{record.msg}: malformed request answered {error.code}: {error.message!r}"
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


class UnreadablePolls(logging.Filter):
    """python-engineio logs a long-polling POST whose payload is not Engine.IO packets as an ERROR
    with a traceback (it then closes the session). The client's fault: one WARNING line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if record.msg == "post request handler error" and isinstance(error, ValueError | KeyError | IndexError):
            record.msg = f"unreadable long-polling payload; session closed: {error!r}"[:300]
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(KeyValueFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(MalformedRequests())
    logging.getLogger("engineio").setLevel(logging.WARNING)
    logging.getLogger("engineio.server").addFilter(UnreadablePolls())
    logging.getLogger("socketio").setLevel(logging.WARNING)
