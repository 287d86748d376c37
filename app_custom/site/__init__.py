"""Training scripts that run at the sites through FLARE's Client API (plain PyTorch, no FLARE types)."""
