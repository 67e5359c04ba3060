"""Upstream providers: how a request leaves the gateway."""
