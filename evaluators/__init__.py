"""Async evaluators that score sampled calls off the request path. Importable without `gateway`."""
