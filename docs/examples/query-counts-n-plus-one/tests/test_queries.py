async def test_books_page_is_not_an_n_plus_one(client, memdb_queries):
    for title, author in [("Mort", "Terry Pratchett"), ("Kindred", "Octavia E. Butler")]:
        await client.post("/books", json={"title": title, "author": author})
    with memdb_queries.assert_max(2):  # fails, listing the statements, when more ran
        response = await client.get("/books")
    assert response.status_code == 200
