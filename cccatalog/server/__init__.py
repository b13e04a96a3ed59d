"""The HTTP side of serve: pure routing, and the ThreadingHTTPServer adapter over it."""
