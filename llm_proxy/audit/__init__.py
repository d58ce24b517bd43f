"""The audit trail: exchange records, the writer, its stores (SQLite, PostgreSQL), migrations, reading."""
