from sqlalchemy import text


def test_every_test_starts_from_the_dump(memdb_sync_session):
    names = memdb_sync_session.scalars(text("SELECT name FROM product ORDER BY id")).all()
    assert names == ["kettle", "teapot", "mug"]


def test_what_only_postgresql_has_came_with_it(memdb_sync_session):
    assert memdb_sync_session.scalar(text("SELECT price_with_tax(1000)")) == 1200
    red = memdb_sync_session.scalar(
        text("""SELECT name FROM product WHERE attributes @> '{"colour": "red"}'""")
    )
    assert red == "kettle"


def test_new_rows_get_new_ids(memdb_sync_session):
    memdb_sync_session.execute(text("INSERT INTO product (name) VALUES ('cup')"))
    memdb_sync_session.commit()
    assert memdb_sync_session.scalar(text("SELECT max(id) FROM product")) == 4
