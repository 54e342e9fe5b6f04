from collections_kit.migrate import run_env
from workflow.adapters.tables import metadata

run_env(metadata)
