"""``python -m notifier [serve|migrate|reseal]``."""

from __future__ import annotations

import asyncio
import sys

from collections_kit import cli, logs
from collections_kit.db import make_engine
from notifier.adapters.reseal import reseal
from notifier.entrypoints.bootstrap import MIGRATIONS, build_runtime, create_app
from notifier.settings import NotifierSettings


def _reseal() -> int:
    """After a key rotation: re-seal what older keys sealed (see adapters/reseal.py)."""
    config = NotifierSettings()
    logs.configure(config.service_name, config.log_level)

    async def run() -> None:
        engine = make_engine(config.database_url, schema=config.db_schema)
        try:
            await reseal(engine, config.key_ring())
        finally:
            await engine.dispose()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["reseal"]:
        sys.exit(_reseal())
    sys.exit(
        cli.run(
            sys.argv,
            settings=NotifierSettings,
            migrations=MIGRATIONS,
            build_runtime=build_runtime,
            create_app=create_app,
        )
    )
