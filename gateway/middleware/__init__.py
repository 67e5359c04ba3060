"""Pure ASGI middleware, one concern each; `gateway.app` stacks them in one list."""
