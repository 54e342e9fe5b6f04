"""``python -m workflow [serve|migrate]``."""

from __future__ import annotations

import sys

from collections_kit import logs
from collections_kit.migrate import upgrade
from collections_kit.runtime import serve
from workflow.entrypoints.bootstrap import MIGRATIONS, build_runtime, create_app
from workflow.settings import WorkflowSettings


def main(argv: list[str]) -> int:
    settings = WorkflowSettings()
    logs.configure(settings.service_name, settings.log_level)
    command = argv[1] if len(argv) > 1 else "serve"
    if command == "migrate":
        upgrade(MIGRATIONS, settings.database_url, settings.db_schema)
        return 0
    if command == "serve":
        return serve(lambda: create_app(build_runtime(settings)), settings)
    sys.stderr.write("usage: python -m workflow [serve|migrate]\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
