"""Serving benchmark: `cccatalog serve` against nginx + fcgiwrap, git daemon and raw upload-pack."""
