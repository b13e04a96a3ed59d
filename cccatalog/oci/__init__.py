"""OCI images: registry client (auth, cache), canonical tags and newest-build resolution."""
