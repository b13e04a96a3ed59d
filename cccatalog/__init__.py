"""cccatalog: air-gap git mirrors and image catalog for CodeCollections."""

__version__ = "0.1.0"
