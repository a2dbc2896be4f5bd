from sqlalchemy import text

from myapp.models import User


def test_mocked_session_user_class(mocked_session):
    user = mocked_session.query(User).filter_by(id=2).first()
    assert user.name == "Dwight"


def test_a_write_stays_in_its_test(mocked_session):
    mocked_session.add(User(id=3, name="Jim"))
    mocked_session.commit()
    assert mocked_session.execute(text('SELECT count(*) FROM "user"')).scalar() == 3


def test_the_next_test_starts_from_the_seed(mocked_session):
    assert mocked_session.query(User).count() == 2
