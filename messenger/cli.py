"""The `messenger` command: `serve` runs the service, `backup` copies its data, `token` prints a token."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from aiohttp import web

from config.settings import ConfigError, Settings, load_settings
from core.errors import MessengerError
from core.identity import issue_token
from messenger import __version__
from messenger.logs import configure_logging

log = logging.getLogger("messenger")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="messenger", description="Real-time messaging and attachments for marketplaces"
    )
    parser.add_argument("--version", action="version", version=f"messenger {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP + Socket.IO service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)

    commands.add_parser("worker", help="run the attachment pipeline (scan, preview, release) and the event relay")

    backup = commands.add_parser(
        "backup", help="copy the embedded database and files, consistently, while the service runs"
    )
    backup.add_argument("destination", help="a new directory; it becomes a data dir to restore from")

    token = commands.add_parser("token", help="print a token signed with the configured secret")
    token.add_argument("user_id")
    token.add_argument("--name")
    token.add_argument("--moderator", action="store_true")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (default 3600)")

    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"messenger: {exc}", file=sys.stderr)
        return 1

    if args.command == "token":
        if args.ttl <= 0:
            print("messenger: --ttl must be positive", file=sys.stderr)
            return 2
        try:
            token_text = issue_token(
                settings.auth, args.user_id, name=args.name, moderator=args.moderator, ttl_seconds=args.ttl
            )
        except MessengerError as exc:
            print(f"messenger: {exc.message}", file=sys.stderr)
            return 1
        print(token_text)
        return 0

    if args.command == "backup":
        return run_backup(settings, args.destination)

    configure_logging(settings.runtime.log_level)
    if args.command == "worker":
        if not settings.mongo.uri:
            print(
                "messenger: a separate worker needs the database the service uses: set MONGODB_URI"
                " (with the embedded default the pipeline already runs inside `messenger serve`)",
                file=sys.stderr,
            )
            return 1
        return run_worker_until_signalled(settings)
    from core.runtime import chosen_json, install_event_loop
    from messenger.app import create_app
    from messenger.data_dir import DataDirInUse
    from messenger.web import page_origins

    loop_name = install_event_loop()  # before run_app makes its loop
    log.info(
        "messenger %s serving http://%s:%d (env %s, data dir %s, event loop %s, JSON %s)",
        __version__,
        args.host,
        args.port,
        settings.runtime.env,
        Path(settings.runtime.data_dir).absolute(),
        loop_name,
        chosen_json(),
    )
    app = create_app(settings, page_origins=page_origins(args.host, args.port))
    try:
        web.run_app(app, host=args.host, port=args.port, print=None, access_log=None, handle_signals=True)
    except DataDirInUse as exc:
        log.error("%s", exc)  # the log goes to stderr
        return 1
    return 0


def run_backup(settings: Settings, destination: str) -> int:
    from pathlib import Path

    from messenger.backup import backup

    if settings.mongo.uri:
        print(
            "messenger: backup copies the embedded SQLite database; with MONGODB_URI back up MongoDB itself"
            " (mongodump, or your provider's snapshots) and the S3 bucket",
            file=sys.stderr,
        )
        return 1
    try:
        report = backup(Path(settings.runtime.data_dir).absolute(), Path(destination).absolute())
    except (OSError, RuntimeError) as exc:
        print(f"messenger: backup failed: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


def run_worker_until_signalled(settings: Settings) -> int:
    import asyncio
    import signal

    from messenger.app import run_worker

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await run_worker(settings, stop)

    from messenger.data_dir import DataDirInUse

    log.info("messenger %s worker starting", __version__)
    try:
        asyncio.run(main())
    except DataDirInUse as exc:
        print(f"messenger: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
