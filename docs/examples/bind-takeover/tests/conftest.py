import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from myapp.models import Base


@pytest.fixture(scope="session")
def engine():
    engine = create_engine("sqlite:///./test.db")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine):
    with sessionmaker(bind=engine)() as session:
        yield session
