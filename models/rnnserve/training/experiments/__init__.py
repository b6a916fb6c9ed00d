"""Small measured experiments behind the claims in models/README.md."""
