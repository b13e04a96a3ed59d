"""State and catalog views: the SQLite store (the only SQL), its migrations, and records."""
