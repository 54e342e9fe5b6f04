from collections_kit.migrate import run_env
from notifier.adapters.tables import metadata

run_env(metadata)
