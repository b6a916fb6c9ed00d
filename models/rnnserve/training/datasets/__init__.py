"""Loaders that turn the fetched data packages (and generated tasks) into deterministic splits."""
