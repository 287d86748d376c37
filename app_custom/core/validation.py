"""Checks a site contribution must pass before it enters an aggregate.

Every failed check raises ``ContributionRejected`` with a ``reason_code`` from ``REASON_CODES`` and a detail that
names the key, the value found and the value expected. Structural checks (keys, dtypes, shapes) run before the value
scans, so a malformed contribution is rejected without reading its arrays.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import numpy as np

from app_custom.core.errors import ContributionRejected, InvalidSetting

__all__ = ["check_contribution", "check_num_examples", "update_l2_norm"]

# Elements per chunk for the value scans, so a scan of a large array needs only a small temporary buffer.
_CHUNK = 1 << 16


def check_contribution(
    params: Mapping[str, np.ndarray],
    *,
    global_params: Mapping[str, np.ndarray] | None,
    num_examples: float | None,
    max_update_norm: float | None = None,
) -> None:
    """Reject a site model that is malformed, non-finite, unweighted or too far from the global model.

    Args:
        params: The site model, key to array.
        global_params: The global model the site started the round from. When None, only ``num_examples`` and
            finiteness are checked.
        num_examples: The number of training examples the site reports; must be a finite number greater than zero.
        max_update_norm: Maximum allowed L2 norm of ``params - global_params`` over all floating-point arrays
            together. None turns the check off.

    Raises:
        ContributionRejected: With ``reason_code`` ``bad_num_examples``, ``missing_key``, ``unexpected_key``,
            ``dtype_mismatch``, ``shape_mismatch``, ``non_finite`` or ``norm_exceeded``; checked in that order.
        InvalidSetting: If ``max_update_norm`` is not a finite number greater than zero, or is set without
            ``global_params``.
    """
    if max_update_norm is not None:
        _check_max_update_norm(max_update_norm, has_global=global_params is not None)
    check_num_examples(num_examples)

    arrays = {key: np.asarray(value) for key, value in params.items()}
    if global_params is not None:
        reference = {key: np.asarray(value) for key, value in global_params.items()}
        _check_keys(arrays, reference)
        _check_dtypes_and_shapes(arrays, reference)
    else:
        reference = None
        for key, array in arrays.items():
            _check_numeric(key, array)

    for key, array in arrays.items():
        _check_finite(key, array)

    if max_update_norm is not None and reference is not None:
        norm = update_l2_norm(arrays, reference)
        if norm > max_update_norm:
            raise ContributionRejected(
                "norm_exceeded",
                f"L2 norm of the update (params - global_params) is {norm:.6g}; expected at most "
                f"{max_update_norm:.6g}. The site may have diverged or be adversarial; lower its learning rate "
                "or local steps, or raise max_update_norm if such updates are legitimate",
            )


def check_num_examples(num_examples: float | None) -> float:
    """Return ``num_examples`` as a float after checking it is a finite number greater than zero.

    Raises:
        ContributionRejected: With ``reason_code`` ``bad_num_examples`` if it is None, not a number, a bool,
            non-finite, zero or negative.
    """
    if num_examples is None:
        raise ContributionRejected(
            "bad_num_examples",
            "num_examples is missing; expected a finite number greater than zero in the site's contribution",
        )
    if isinstance(num_examples, bool) or not isinstance(num_examples, numbers.Real):
        raise ContributionRejected(
            "bad_num_examples",
            f"num_examples is {num_examples!r} of type {type(num_examples).__name__}; "
            "expected a finite number greater than zero",
        )
    value = float(num_examples)
    if not math.isfinite(value) or value <= 0.0:
        raise ContributionRejected(
            "bad_num_examples",
            f"num_examples is {num_examples!r}; expected a finite number greater than zero "
            "(a site with no training examples must not contribute)",
        )
    return value


def update_l2_norm(params: Mapping[str, np.ndarray], global_params: Mapping[str, np.ndarray]) -> float:
    """Return the L2 norm of ``params - global_params`` over all floating-point arrays, computed in float64.

    Integer and boolean arrays (counters such as BatchNorm ``num_batches_tracked``) are left out. Keys of
    ``params`` must be present in ``global_params`` with the same shape.
    """
    total = 0.0
    for key, value in params.items():
        array = np.asarray(value)
        if array.dtype.kind not in "fc":
            continue
        flat = array.reshape(-1)
        flat_global = np.asarray(global_params[key]).reshape(-1)
        for start in range(0, flat.size, _CHUNK):
            delta = flat[start : start + _CHUNK].astype(np.float64) - flat_global[start : start + _CHUNK]
            total += float(np.vdot(delta, delta).real)
    return math.sqrt(total)


def _check_max_update_norm(max_update_norm: float, *, has_global: bool) -> None:
    if isinstance(max_update_norm, bool) or not isinstance(max_update_norm, numbers.Real):
        raise InvalidSetting(f"max_update_norm is {max_update_norm!r}; expected a finite number greater than zero")
    if not math.isfinite(max_update_norm) or max_update_norm <= 0:
        raise InvalidSetting(
            f"max_update_norm is {max_update_norm!r}; expected a finite number greater than zero, or None to turn "
            "the norm check off"
        )
    if not has_global:
        raise InvalidSetting(
            "max_update_norm is set but global_params is None; the update norm needs the global model, so pass "
            "global_params or set max_update_norm to None"
        )


def _check_keys(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> None:
    missing = sorted(reference.keys() - arrays.keys())
    if missing:
        raise ContributionRejected(
            "missing_key",
            f"params lacks {len(missing)} key(s) of the global model, first {missing[0]!r} "
            f"(all missing, up to 5: {missing[:5]}); the site must send every parameter of the global model",
            key=missing[0],
        )
    unexpected = sorted(arrays.keys() - reference.keys())
    if unexpected:
        raise ContributionRejected(
            "unexpected_key",
            f"params has {len(unexpected)} key(s) that the global model lacks, first {unexpected[0]!r} "
            f"(all unexpected, up to 5: {unexpected[:5]}); the site must train the same architecture as the server",
            key=unexpected[0],
        )


def _check_dtypes_and_shapes(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> None:
    for key, array in arrays.items():
        expected = reference[key]
        if array.dtype != expected.dtype:
            raise ContributionRejected(
                "dtype_mismatch",
                f"params[{key!r}] has dtype {array.dtype}; expected {expected.dtype} as in the global model",
                key=key,
            )
        if array.shape != expected.shape:
            raise ContributionRejected(
                "shape_mismatch",
                f"params[{key!r}] has shape {array.shape}; expected {expected.shape} as in the global model",
                key=key,
            )


def _check_numeric(key: str, array: np.ndarray) -> None:
    if array.dtype.kind not in "biufc":
        raise ContributionRejected(
            "dtype_mismatch",
            f"params[{key!r}] has dtype {array.dtype}; expected a boolean, integer or floating-point array",
            key=key,
        )


def _check_finite(key: str, array: np.ndarray) -> None:
    if array.dtype.kind not in "fc":
        return
    flat = array.reshape(-1)
    for start in range(0, flat.size, _CHUNK):
        if np.isfinite(flat[start : start + _CHUNK]).all():
            continue
        bad = np.flatnonzero(~np.isfinite(flat))
        first_index = tuple(int(i) for i in np.unravel_index(int(bad[0]), array.shape))
        raise ContributionRejected(
            "non_finite",
            f"params[{key!r}] contains {bad.size} non-finite value(s), first {flat[bad[0]].item()!r} at index "
            f"{first_index}; expected only finite values. Training at the site diverged; lower its learning rate "
            "or enable gradient clipping",
            key=key,
        )
