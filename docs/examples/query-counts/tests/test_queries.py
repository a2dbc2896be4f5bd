from sqlalchemy import text


async def test_books_page_is_not_an_n_plus_one(client, memdb_queries):
    for title, author in [("Mort", "Terry Pratchett"), ("Kindred", "Octavia E. Butler")]:
        await client.post("/books", json={"title": title, "author": author})
    with memdb_queries.assert_max(2):  # fails, listing the statements, when more ran
        response = await client.get("/books")
    assert response.status_code == 200


async def test_what_ran(memdb_session, memdb_queries):
    with memdb_queries.count() as q:
        await memdb_session.execute(text("SELECT count(*) FROM book"))
        await memdb_session.commit()
    assert q.count == 1
    assert q.statements == ["SELECT count(*) FROM book"]
