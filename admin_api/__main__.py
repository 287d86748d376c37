"""Run the admin service: ``python -m admin_api --host 127.0.0.1 --port 8080``.

Settings come from ``CONSORTIA_*`` environment variables (see ``admin_api.settings``); ``--host`` and ``--port``
override ``CONSORTIA_HOST`` and ``CONSORTIA_PORT``.
"""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from admin_api.errors import ConfigurationError
from admin_api.logging_setup import configure_logging
from admin_api.settings import load_settings

logger = logging.getLogger("admin_api")


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser."""
    parser = argparse.ArgumentParser(prog="python -m admin_api", description="Run the Consortia admin service.")
    parser.add_argument("--host", help="interface to bind (default: CONSORTIA_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port to listen on (default: CONSORTIA_PORT or 8080)")
    parser.add_argument("--log-level", default="INFO", help="log level name, for example INFO or DEBUG (default: INFO)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Validate the settings, then serve until interrupted.

    Returns:
        The process exit code: 0 after a clean shutdown, 2 for invalid settings.
    """
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        logger.error("%s", exc)
        return 2

    host = args.host or settings.host
    port = args.port or settings.port
    logger.info("starting admin service on %s:%d", host, port)
    uvicorn.run(
        "admin_api.app:create_app",
        factory=True,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
