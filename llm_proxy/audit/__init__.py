"""The audit trail: exchange records, the SQLite store, migrations and the writer."""
