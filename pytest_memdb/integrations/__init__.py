"""The user's own code, pointed at the test's database: binding, factories, session classes,
strict mode, query counts, takeover."""
