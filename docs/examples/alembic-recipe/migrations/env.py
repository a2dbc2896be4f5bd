from alembic import context
from sqlalchemy import create_engine

from myapp.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection", None)
    if connectable is not None:  # the recipe: the connection pytest-memdb passes in
        context.configure(connection=connectable, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    with create_engine("sqlite:///production.db").connect() as connection:  # your own
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
