"""Exceptions raised by the privacy core.

Tree::

    PrivacyError                          base of every error raised in app_custom.core.privacy
    ├── InvalidPrivacySetting (ValueError) a privacy setting is missing, non-finite or out of range
    │                                      (epsilon, delta, noise_multiplier, max_grad_norm, sample_rate, ...)
    ├── InvalidPrivacyInput (ValueError)   data handed to a privacy mechanism cannot be protected as given
    │                                      (a non-finite update, mismatched encrypted contributions, values
    │                                      outside the range a CKKS preset decrypts correctly)
    ├── BudgetExceeded                     the next round would take a site past its privacy budget
    └── HEConfigError (ValueError)         a CKKS preset or context is unsafe or unusable, for example a preset
                                           that would decrypt to wrong values or a public context asked to decrypt

Every check runs before any data is touched, so an error means nothing was released. Adapters translate these
errors into FLARE return codes and audit events; the privacy core never does.
"""

from __future__ import annotations

__all__ = [
    "BudgetExceeded",
    "HEConfigError",
    "InvalidPrivacyInput",
    "InvalidPrivacySetting",
    "PrivacyError",
]


class PrivacyError(Exception):
    """Base class of every error raised by the privacy core."""


class InvalidPrivacySetting(PrivacyError, ValueError):
    """A privacy setting is missing, non-finite or outside its valid range.

    The message names the setting, the value found, why it is invalid and what to set instead.
    """


class InvalidPrivacyInput(PrivacyError, ValueError):
    """Data handed to a privacy mechanism cannot be protected as given, so the mechanism releases nothing."""


class BudgetExceeded(PrivacyError):
    """The next round would take a site past its privacy budget.

    Attributes:
        epsilon_budget: The site's total epsilon budget.
        epsilon_after: The total epsilon the site would have spent after the next round.
        delta_budget: The site's total delta budget.
        delta_after: The total delta the site would have spent after the next round.
    """

    def __init__(
        self,
        message: str,
        *,
        epsilon_budget: float,
        epsilon_after: float,
        delta_budget: float,
        delta_after: float,
    ) -> None:
        super().__init__(message)
        self.epsilon_budget = epsilon_budget
        self.epsilon_after = epsilon_after
        self.delta_budget = delta_budget
        self.delta_after = delta_after


class HEConfigError(PrivacyError, ValueError):
    """A CKKS preset or TenSEAL context is unsafe or cannot perform the requested operation."""
