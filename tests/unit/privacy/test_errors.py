"""Tests for the privacy exception tree and the package's public names."""

from app_custom.core import privacy
from app_custom.core.privacy.errors import (
    BudgetExceeded,
    HEConfigError,
    InvalidPrivacyInput,
    InvalidPrivacySetting,
    PrivacyError,
)


def test_tree():
    assert issubclass(InvalidPrivacySetting, PrivacyError)
    assert issubclass(InvalidPrivacySetting, ValueError)
    assert issubclass(InvalidPrivacyInput, PrivacyError)
    assert issubclass(InvalidPrivacyInput, ValueError)
    assert issubclass(BudgetExceeded, PrivacyError)
    assert not issubclass(BudgetExceeded, ValueError)
    assert issubclass(HEConfigError, PrivacyError)
    assert issubclass(HEConfigError, ValueError)


def test_budget_exceeded_numbers():
    error = BudgetExceeded("over", epsilon_budget=1.0, epsilon_after=1.5, delta_budget=1e-5, delta_after=1e-5)
    assert str(error) == "over"
    assert error.epsilon_budget == 1.0
    assert error.epsilon_after == 1.5
    assert error.delta_budget == 1e-5
    assert error.delta_after == 1e-5


def test_package_exports():
    assert set(privacy.__all__) == {
        "BudgetExceeded",
        "HEConfigError",
        "InvalidPrivacyInput",
        "InvalidPrivacySetting",
        "PrivacyError",
    }
