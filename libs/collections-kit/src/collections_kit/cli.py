"""The command line every service shares: ``python -m <service> [serve|migrate]``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from fastapi import FastAPI

from collections_kit import logs, tracing
from collections_kit.migrate import upgrade
from collections_kit.runtime import Runtime, serve
from collections_kit.settings import ServiceSettings

S = TypeVar("S", bound=ServiceSettings)


def run(
    argv: list[str],
    *,
    settings: Callable[[], S],
    migrations: Path,
    build_runtime: Callable[[S], Runtime],
    create_app: Callable[[Runtime], FastAPI],
) -> int:
    config = settings()
    logs.configure(config.service_name, config.log_level)
    command = argv[1] if len(argv) > 1 else "serve"
    if command == "migrate":
        upgrade(migrations, config.database_url, config.db_schema)
        return 0
    if command == "serve":
        tracing.configure(config)
        try:
            return serve(lambda: create_app(build_runtime(config)), config)
        finally:
            tracing.shutdown()
    sys.stderr.write(f"usage: python -m {config.service_name.replace('-', '_')} [serve|migrate]\n")
    return 2
