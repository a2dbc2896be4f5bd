def pytest_memdb_template(connection, config, target):
    if target.fixture == "memdb":
        connection.exec_driver_sql("INSERT INTO author (name) VALUES ('N. K. Jemisin')")
