"""Image catalogue, streaming storage and the TLS image site."""
