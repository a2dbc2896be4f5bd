from myapp.models import Author
from tests.factories import AuthorFactory


def test_bind(memdb_factories, memdb_sync_session):
    memdb_factories.bind(AuthorFactory)
    AuthorFactory.create_batch(2)
    assert memdb_factories.session is memdb_sync_session
    assert memdb_sync_session.query(Author).count() == 2
