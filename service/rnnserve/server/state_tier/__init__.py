"""The shared state tier: session state kept in Redis, so that another process can continue it."""
