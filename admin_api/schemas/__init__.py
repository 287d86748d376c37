"""Pydantic schemas at the HTTP boundary: ``*Create`` for input, ``*Public`` for output."""
