from shared.crypto import metadata
from shared.db import run_migrations_in_env

run_migrations_in_env(metadata)
