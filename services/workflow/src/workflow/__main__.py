"""``python -m workflow [serve|migrate]``."""

from __future__ import annotations

import sys

from collections_kit import cli
from workflow.entrypoints.bootstrap import MIGRATIONS, build_runtime, create_app
from workflow.settings import WorkflowSettings

if __name__ == "__main__":
    sys.exit(
        cli.run(
            sys.argv,
            settings=WorkflowSettings,
            migrations=MIGRATIONS,
            build_runtime=build_runtime,
            create_app=create_app,
        )
    )
