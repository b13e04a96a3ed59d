"""State and catalog views: the store (SQLite or PostgreSQL; the only SQL), its migrations, and records."""
