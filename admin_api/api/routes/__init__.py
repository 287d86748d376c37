"""Route modules; each handler loads, authorizes, calls one service function and returns its result."""
