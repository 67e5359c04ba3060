"""OpenAI wire format: types, validation and SSE framing. No I/O."""
