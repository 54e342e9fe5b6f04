from collections_kit.migrate import run_env
from ledger_sync.adapters.tables import metadata

run_env(metadata)
