"""``python -m app``: start the playground (optionally with the embedded engine)."""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path

import uvicorn

from app.chat import ChatService
from app.engine import EngineError, embedded_engine
from app.logs import configure_logging
from app.memory import tune_allocator
from app.server import create_app
from app.settings import SettingsError, load_settings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description=(
            "Start the coding-assistant playground at http://APP_HOST:APP_PORT. Settings come "
            "from environment variables and the env file (see docs/settings.md)."
        ),
    )
    parser.add_argument(
        "--engine",
        action="store_true",
        help="also start the embedded engine, llama.cpp's llama-server (ENGINE_SERVER), "
        "serving ENGINE_MODEL_PATH on ENGINE_PORT to ENGINE_PARALLEL people at once, and chat "
        "with it instead of BACKEND_URL; it is started again if it dies, and stops when the "
        "app stops",
    )
    parser.add_argument(
        "--env-file",
        type=Path,
        default=None,
        help="read settings from this file instead of ./.env (the environment still wins)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tune_allocator()  # before the server's threads start
    try:
        settings = load_settings(args.env_file)
        if args.engine:
            settings = load_settings(args.env_file, backend_url=settings.engine_url)
    except SettingsError as err:
        print(err, file=sys.stderr)
        return 2
    configure_logging(settings.secrets(), settings.log_level, settings.log_format == "json")
    with ExitStack() as stack:
        service = ChatService(settings)
        if args.engine:
            log = Path("volumes/data/engine.log")
            print(f"Starting the embedded engine with {settings.engine_model_path} ...", flush=True)
            try:
                engine = stack.enter_context(embedded_engine(settings, log))
            except EngineError as err:
                print(f"error: {err}", file=sys.stderr)
                return 1
            for backend in service.router.states:
                if backend.client.url == settings.engine_url:
                    service.router.explain(backend.name, engine.explain)
        if settings.ephemeral_history:
            print(
                "warning: this Space has no persistent storage (/data); conversations are "
                "lost when it restarts",
                file=sys.stderr, flush=True,
            )
        app = create_app(settings, service)
        print(
            f"Starting the playground at http://{settings.app_host}:{settings.app_port} "
            "(Ctrl-C stops it)",
            flush=True,
        )
        uvicorn.run(
            app, host=settings.app_host, port=settings.app_port, access_log=False,
            timeout_graceful_shutdown=5, log_config=None,
            proxy_headers=True, forwarded_allow_ips=settings.trusted_proxies,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
