"""cccatalog test suite."""
