"""HTTP layer: routes, dependencies, middleware and problem-details error handlers."""
