from services.retention.models import Base
from shared.db import run_migrations_in_env

run_migrations_in_env(Base.metadata)
