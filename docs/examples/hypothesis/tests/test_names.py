from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from myapp.models import Author


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(min_size=1, max_size=50))
async def test_any_author_name_is_stored(memdb, memdb_session, name):
    await memdb.areset()  # every example starts from the template
    memdb_session.add(Author(name=name))
    await memdb_session.commit()
    assert await memdb_session.scalar(select(func.count()).select_from(Author)) == 1
    assert await memdb_session.scalar(select(Author.name)) == name


@settings(max_examples=20, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(st.text(min_size=1), min_size=1, max_size=5, unique=True))
def test_a_sync_test(memdb, memdb_sync_session, names):
    memdb.reset()
    memdb_sync_session.add_all(Author(name=name) for name in names)
    memdb_sync_session.commit()
    assert memdb_sync_session.scalar(select(func.count()).select_from(Author)) == len(names)
