from pytest_memdb import memdb_factory

from make_data import make_analytics

make_analytics()  # tests/data/analytics.sqlite, once

analytics_db = memdb_factory("analytics_db", file="tests/data/analytics.sqlite")
audit_db = memdb_factory("audit_db", metadata="myapp.models:Base", isolation="rollback")
