"""``python -m ledger_sync [serve|migrate]``."""

from __future__ import annotations

import sys

from collections_kit import cli
from ledger_sync.entrypoints.bootstrap import MIGRATIONS, build_runtime, create_app
from ledger_sync.settings import LedgerSyncSettings

if __name__ == "__main__":
    sys.exit(
        cli.run(
            sys.argv,
            settings=LedgerSyncSettings,
            migrations=MIGRATIONS,
            build_runtime=build_runtime,
            create_app=create_app,
        )
    )
