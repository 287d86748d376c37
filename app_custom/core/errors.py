"""Exceptions raised by the pure learning core.

Tree::

    CoreError                      base of every error raised in app_custom.core and app_custom.data
    ├── ContributionRejected       one site contribution failed a check; carries reason_code and detail
    ├── NoValidContributions       an aggregate was requested but no contribution was accepted
    ├── InvalidSetting (ValueError) an algorithm setting or argument is out of range (alpha, gamma, beta, ...)
    └── PartitionError (ValueError) a data partition cannot be built as requested

Adapters translate these into FLARE return codes and audit events; the core never does.
"""

from __future__ import annotations

__all__ = [
    "REASON_CODES",
    "ContributionRejected",
    "CoreError",
    "InvalidSetting",
    "NoValidContributions",
    "PartitionError",
]

REASON_CODES: frozenset[str] = frozenset(
    {
        "non_finite",
        "shape_mismatch",
        "dtype_mismatch",
        "missing_key",
        "unexpected_key",
        "bad_num_examples",
        "norm_exceeded",
    }
)
"""Machine-readable reasons a contribution can be rejected for; adapters put them into events."""


class CoreError(Exception):
    """Base class of every error raised by the learning core."""


class ContributionRejected(CoreError):
    """A site contribution failed a check and must not enter the aggregate.

    Attributes:
        reason_code: One of ``REASON_CODES``.
        detail: Human-readable text naming the key and value found and what was expected.
        key: The parameter key the check failed on, or None when the failure is not about one key.
    """

    def __init__(self, reason_code: str, detail: str, *, key: str | None = None) -> None:
        if reason_code not in REASON_CODES:
            raise ValueError(f"unknown reason_code {reason_code!r}; expected one of {sorted(REASON_CODES)}")
        super().__init__(f"{reason_code}: {detail}")
        self.reason_code = reason_code
        self.detail = detail
        self.key = key


class NoValidContributions(CoreError):
    """An aggregate was requested, but no contribution was added or all were rejected."""


class InvalidSetting(CoreError, ValueError):
    """An algorithm setting or argument is outside its valid range."""


class PartitionError(CoreError, ValueError):
    """A data partition cannot be built as requested, for example because a site would get no examples."""
