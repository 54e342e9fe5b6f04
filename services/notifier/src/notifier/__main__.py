"""``python -m notifier [serve|migrate]``."""

from __future__ import annotations

import sys

from collections_kit import cli
from notifier.entrypoints.bootstrap import MIGRATIONS, build_runtime, create_app
from notifier.settings import NotifierSettings

if __name__ == "__main__":
    sys.exit(cli.run(sys.argv, settings=NotifierSettings, migrations=MIGRATIONS,
                     build_runtime=build_runtime, create_app=create_app))
