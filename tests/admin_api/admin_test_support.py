"""Constants and types shared by the admin service tests; fixtures live in conftest.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

EVENT_TOKEN = "evt-Qm7xK2pV9sW4nB8cR1tY6uZ3aD5fG0hJ"
API_TOKEN = "api-Lr4eT8yU1iO5pA9sD2fG6hJ3kZ7xC0vB"

EventFactory = Callable[..., dict[str, Any]]
"""Builds a valid event dict: ``make_event(event_type, **overrides)``."""
