from sqlalchemy import insert

from myapp.models import User


def add_users(conn):  # what sqlalchemy_mock_config returned, inserted once into the template
    conn.execute(insert(User), [{"id": 1, "name": "Kevin"}, {"id": 2, "name": "Dwight"}])
