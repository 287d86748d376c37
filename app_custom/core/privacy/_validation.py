"""Shared input checks for the privacy core: a strict pydantic base model and scalar checks.

Every check raises ``InvalidPrivacySetting`` (``HEConfigError`` for CKKS presets) with the setting's name, the value
found, why it is invalid and what to set instead. Pydantic's ``ValidationError`` never leaves this package.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from app_custom.core.privacy.errors import InvalidPrivacySetting, PrivacyError

__all__ = [
    "PrivacyConfigModel",
    "check_delta",
    "check_non_negative_int",
    "check_positive_finite",
    "check_positive_int",
    "check_sample_rate",
]


def _format_validation_error(model_name: str, error: ValidationError, hints: dict[str, str]) -> str:
    lines = [f"invalid {model_name}:"]
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        field = ".".join(str(part) for part in item["loc"])
        if not field:
            # A check across fields: its message names the values itself.
            lines.append(f"  {message}.")
            continue
        shown = f"{field} is missing" if item["type"] == "missing" else f"{field}={item['input']!r}"
        hint = hints.get(field, "")
        lines.append(f"  {shown}: {message}." + (f" {hint}" if hint else ""))
    return "\n".join(lines)


class PrivacyConfigModel(BaseModel):
    """Base of the privacy config models: strict types, no unknown keys, immutable after validation.

    Strict mode rejects strings and booleans where a number is expected (YAML 1.1 reads ``1e-5`` as a string), so
    a setting is never coerced into a different value. Unknown keys are rejected, so a misspelt setting cannot fall
    back to its default. Subclasses list a hint per field in ``_hints`` and choose the error class they raise in
    ``_error_type``.
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")
    _hints: ClassVar[dict[str, str]] = {}
    _error_type: ClassVar[type[PrivacyError]] = InvalidPrivacySetting

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as error:
            raise self._error_type(_format_validation_error(type(self).__name__, error, self._hints)) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Self:  # type: ignore[override]
        """Validate ``obj``, raising ``InvalidPrivacySetting`` in place of pydantic's ``ValidationError``."""
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as error:
            raise cls._error_type(_format_validation_error(cls.__name__, error, cls._hints)) from None

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> Self:  # type: ignore[override]
        """Validate a JSON document, raising ``InvalidPrivacySetting`` in place of ``ValidationError``."""
        try:
            return super().model_validate_json(json_data, **kwargs)
        except ValidationError as error:
            raise cls._error_type(_format_validation_error(cls.__name__, error, cls._hints)) from None

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """Copy the model, validating ``update`` again, because pydantic's own copy skips validation."""
        if not update:
            return super().model_copy(deep=deep)
        return type(self).model_validate({**self.model_dump(), **update})


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive_finite(name: str, value: object, hint: str) -> float:
    """Return ``value`` as a float after checking that it is a finite number > 0."""
    if not _is_real(value) or not math.isfinite(float(value)) or float(value) <= 0:  # type: ignore[arg-type]
        raise InvalidPrivacySetting(f"invalid {name}={value!r}: expected a finite number > 0. {hint}")
    return float(value)  # type: ignore[arg-type]


def check_delta(value: object, *, name: str = "delta") -> float:
    """Return ``value`` as a float after checking that it is in the open interval (0, 1)."""
    if not _is_real(value) or not math.isfinite(float(value)) or not 0.0 < float(value) < 1.0:  # type: ignore[arg-type]
        raise InvalidPrivacySetting(
            f"invalid {name}={value!r}: expected 0 < {name} < 1. "
            "Use a delta well below 1/num_examples, for example 1e-5."
        )
    return float(value)  # type: ignore[arg-type]


def check_sample_rate(value: object, *, name: str = "sample_rate") -> float:
    """Return ``value`` as a float after checking that it is in (0, 1]."""
    if not _is_real(value) or not math.isfinite(float(value)) or not 0.0 < float(value) <= 1.0:  # type: ignore[arg-type]
        raise InvalidPrivacySetting(
            f"invalid {name}={value!r}: expected 0 < {name} <= 1, the probability that one record "
            "(or one site) takes part in a step."
        )
    return float(value)  # type: ignore[arg-type]


def check_positive_int(name: str, value: object, hint: str) -> int:
    """Return ``value`` after checking that it is an int >= 1 (booleans are rejected)."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or int(value) < 1:
        raise InvalidPrivacySetting(f"invalid {name}={value!r}: expected an integer >= 1. {hint}")
    return int(value)


def check_non_negative_int(name: str, value: object, hint: str) -> int:
    """Return ``value`` after checking that it is an int >= 0 (booleans are rejected)."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or int(value) < 0:
        raise InvalidPrivacySetting(f"invalid {name}={value!r}: expected an integer >= 0. {hint}")
    return int(value)
