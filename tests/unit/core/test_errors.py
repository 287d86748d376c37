"""Tests for the core exception tree."""

import pytest

from app_custom.core.errors import (
    REASON_CODES,
    ContributionRejected,
    CoreError,
    InvalidSetting,
    NoValidContributions,
    PartitionError,
)


def test_tree():
    assert issubclass(ContributionRejected, CoreError)
    assert issubclass(NoValidContributions, CoreError)
    assert issubclass(InvalidSetting, CoreError)
    assert issubclass(InvalidSetting, ValueError)
    assert issubclass(PartitionError, CoreError)
    assert issubclass(PartitionError, ValueError)


def test_rejected_attributes():
    error = ContributionRejected("non_finite", "params['w'] contains nan", key="w")
    assert error.reason_code == "non_finite"
    assert error.detail == "params['w'] contains nan"
    assert error.key == "w"
    assert "non_finite" in str(error)
    assert "contains nan" in str(error)


def test_reason_codes_exact():
    assert REASON_CODES == {
        "non_finite",
        "shape_mismatch",
        "dtype_mismatch",
        "missing_key",
        "unexpected_key",
        "bad_num_examples",
        "norm_exceeded",
    }


def test_rejected_unknown_code():
    with pytest.raises(ValueError, match="unknown reason_code 'bogus'"):
        ContributionRejected("bogus", "x")
