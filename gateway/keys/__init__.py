"""Virtual keys: issued to teams, stored hashed, checked on every request."""
