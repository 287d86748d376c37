"""Streaming weighted FedAvg.

FedAvg (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from Decentralized Data",
Algorithm 1) sets the global model to sum_k n_k w_k / sum_k n_k over the accepted site models. ``WeightedFedAvg``
computes that mean one contribution at a time, so the server keeps one model-sized buffer however many sites report.
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import torch

from app_custom.core.errors import ContributionRejected, InvalidSetting, NoValidContributions

__all__ = ["WeightedFedAvg", "weighted_fedavg"]

logger = logging.getLogger(__name__)

# torch.set_num_threads changes state that the whole process shares, so aggregators change it one at a time.
_THREADS_LOCK = threading.Lock()

# When the total weight exceeds this multiple of the reference weight, the sum is rescaled so it cannot overflow.
_MAX_WEIGHT_RATIO = 1e6


class WeightedFedAvg:
    """Weighted mean of site models, computed in one pass over each contribution.

    Each floating-point array is kept as a scaled sum ``S = sum_k (w_k / r) * x_k``, updated in place for each
    contribution, and ``result()`` returns ``S * r / sum_k w_k``. The reference weight ``r`` is the
    first weight. When a weight would make ``sum_k w_k / r`` exceed 1e6, ``S`` is first rescaled to a new ``r``, so
    the sum cannot overflow however large or uneven the weights are. A single contribution is returned exactly.

    Floating-point arrays are accumulated in ``np.result_type(dtype, float32)``: float16 and float32 in float32,
    float64 in float64. Integer and boolean arrays (for example BatchNorm ``num_batches_tracked``) are not averaged:
    the result is their element-wise maximum across sites, because a counter averaged as a float and truncated would
    move backwards. ``result()`` casts every array back to the dtype of the first contribution.

    Each contribution's floating-point arrays are folded in with one call of torch's fused in-place
    ``_foreach_add_(sums, x, alpha=w_k / r)`` (the multi-tensor form of ``add_``) on zero-copy views of the numpy
    arrays: one read of the contribution, one read and write of the sum, no temporary, and one Python call per
    contribution rather than per array. Each fold rounds at most twice per element (once where torch uses a fused multiply-add), so with
    unit roundoff ``u`` of the accumulator dtype (``2**-24`` for float32) every element of the result differs from
    the exact weighted mean by at most ``(N + 3) * u * sum_k w_k |x_k| / sum_k w_k`` (N contributions, first-order
    bound: N - 1 additions, the rounded products and weights, and the final scaling). A float64 sum of float32
    models would make that error negligible but double the accumulator's memory traffic. ``benchmarks/aggregation.py``
    reports the measured error against a float64 reference next to this bound.

    Memory is one buffer per key, independent of the number of sites, plus the returned copy unless ``result()`` is
    called with ``copy=False``. No reference to an input array is kept.
    ``add()`` checks that keys, shapes and dtypes match the first contribution before it changes any state, so a
    rejected contribution leaves the aggregate untouched. It does not check values: run
    ``app_custom.core.validation.check_contribution`` first to reject non-finite or oversized updates.

    Args:
        num_threads: torch intra-op threads used while folding a contribution in; ``None`` keeps the process-wide
            setting. One thread is the default because the sum is limited by memory bandwidth. On a 2-CPU machine,
            two threads were up to 3.7 times slower than one while other processes kept it busy, and at most 1.35
            times faster when it was nearly idle (``benchmarks/aggregation.py``). Raise it on a server with many
            cores and memory channels to itself.

    Raises:
        InvalidSetting: If ``num_threads`` is not None or a whole number of at least 1.
    """

    def __init__(self, *, num_threads: int | None = 1) -> None:
        valid_count = isinstance(num_threads, int) and not isinstance(num_threads, bool) and num_threads >= 1
        if num_threads is not None and not valid_count:
            raise InvalidSetting(f"num_threads is {num_threads!r}; expected a whole number >= 1, or None")
        self._num_threads = num_threads
        self._buffers: dict[str, np.ndarray] = {}
        self._tensors: dict[str, torch.Tensor] = {}
        self._dtypes: dict[str, np.dtype] = {}
        self._count = 0
        self._total_weight = 0.0
        self._reference_weight = 1.0
        self._released = False

    @property
    def count(self) -> int:
        """Number of contributions added since construction or the last ``reset()``."""
        return self._count

    @property
    def total_weight(self) -> float:
        """Sum of the aggregation weights added so far."""
        return self._total_weight

    def reset(self) -> None:
        """Drop all accumulated state, for example at the start of a new round."""
        self._buffers.clear()
        self._tensors.clear()
        self._dtypes.clear()
        self._count = 0
        self._total_weight = 0.0
        self._reference_weight = 1.0
        self._released = False

    def add(self, params: Mapping[str, np.ndarray], aggregation_weight: float) -> None:
        """Fold one site model into the weighted sum.

        Args:
            params: The site model, key to array. Arrays are read, never stored or modified.
            aggregation_weight: The site's weight, usually its ``num_examples``; finite and greater than zero.

        Raises:
            InvalidSetting: If ``aggregation_weight`` is not a finite number greater than zero.
            ContributionRejected: If a key is missing or unexpected, or a shape or dtype differs from the first
                contribution. The aggregate is unchanged in that case.
            InvalidSetting: Also if ``result(copy=False)`` was called since the last ``reset()``.
        """
        self._check_not_released()
        weight = _check_weight(aggregation_weight)
        arrays = {key: np.asarray(value) for key, value in params.items()}
        if self._count == 0:
            self._start(arrays)
            self._reference_weight = weight
        else:
            self._check_structure(arrays)
            new_total = self._total_weight + weight
            if new_total / self._reference_weight > _MAX_WEIGHT_RATIO:
                self._rescale(new_total)
            self._fold(arrays, weight / self._reference_weight)
        self._count += 1
        self._total_weight += weight

    def result(self, *, copy: bool = True) -> dict[str, np.ndarray]:
        """Return the weighted mean, each array in the dtype of the first contribution.

        Args:
            copy: With True, return new arrays and keep the aggregate. With False, scale the sum in place and return
                it without a copy, which saves one pass over the model and a model-sized allocation. The aggregator
                then rejects ``add()`` and ``result()`` until ``reset()``, so it never changes the returned arrays.

        Raises:
            NoValidContributions: If nothing was added since construction or the last ``reset()``.
            InvalidSetting: If ``result(copy=False)`` was already called since the last ``reset()``.
        """
        self._check_not_released()
        if self._count == 0:
            raise NoValidContributions(
                "no contribution was added to the weighted FedAvg; accept at least one site update before "
                "asking for the aggregate"
            )
        scale = self._reference_weight / self._total_weight
        averaged: dict[str, np.ndarray] = {}
        for key, buffer in self._buffers.items():
            if buffer.dtype.kind in "fc" and scale != 1.0:
                if copy:
                    mean = np.multiply(buffer, buffer.dtype.type(scale))
                else:
                    mean = np.multiply(buffer, buffer.dtype.type(scale), out=buffer)
                averaged[key] = mean.astype(self._dtypes[key], copy=False)
            else:
                averaged[key] = buffer.astype(self._dtypes[key], copy=copy)
        if not copy:
            self._released = True
        return averaged

    def _check_not_released(self) -> None:
        if self._released:
            raise InvalidSetting(
                "the weighted FedAvg handed its sum to result(copy=False); call reset() before adding or asking "
                "for another aggregate"
            )

    def _start(self, arrays: dict[str, np.ndarray]) -> None:
        for key, array in arrays.items():
            if array.dtype.kind not in "biufc":
                raise ContributionRejected(
                    "dtype_mismatch",
                    f"params[{key!r}] has dtype {array.dtype}; expected a boolean, integer or floating-point array",
                    key=key,
                )
        for key, array in arrays.items():
            self._dtypes[key] = array.dtype
            buffer = np.array(array, dtype=_accumulator_dtype(array.dtype), copy=True, order="C")
            self._buffers[key] = buffer
            if buffer.dtype.kind in "fc":
                self._tensors[key] = torch.from_numpy(buffer)

    def _check_structure(self, arrays: dict[str, np.ndarray]) -> None:
        if arrays.keys() == self._buffers.keys() and all(
            array.shape == self._buffers[key].shape and array.dtype == self._dtypes[key]
            for key, array in arrays.items()
        ):
            return
        missing = sorted(self._buffers.keys() - arrays.keys())
        if missing:
            raise ContributionRejected(
                "missing_key",
                f"contribution lacks {len(missing)} key(s) that the first contribution had: {missing[:5]}; "
                "every site must send the full model",
                key=missing[0],
            )
        unexpected = sorted(arrays.keys() - self._buffers.keys())
        if unexpected:
            raise ContributionRejected(
                "unexpected_key",
                f"contribution has {len(unexpected)} key(s) that the first contribution lacked: {unexpected[:5]}; "
                "every site must send the same model architecture",
                key=unexpected[0],
            )
        for key, array in arrays.items():
            if array.shape != self._buffers[key].shape:
                raise ContributionRejected(
                    "shape_mismatch",
                    f"params[{key!r}] has shape {array.shape}; expected {self._buffers[key].shape} "
                    "as in the first contribution",
                    key=key,
                )
            if array.dtype != self._dtypes[key]:
                raise ContributionRejected(
                    "dtype_mismatch",
                    f"params[{key!r}] has dtype {array.dtype}; expected {self._dtypes[key]} as in the first "
                    "contribution",
                    key=key,
                )

    def _fold(self, arrays: dict[str, np.ndarray], alpha: float) -> None:
        # One torch call folds every floating-point array in: per-call overhead, not memory traffic, limits the
        # sum when a model has many small layers or the sum stays in cache. torch computes in the sum's dtype, so
        # float16 input is scaled in float32.
        if self._tensors:
            updates = [_as_tensor(arrays[key]) for key in self._tensors]
            with _torch_threads(self._num_threads):
                torch._foreach_add_(list(self._tensors.values()), updates, alpha=alpha)
        if len(self._tensors) < len(self._buffers):
            for key, buffer in self._buffers.items():
                if key not in self._tensors:
                    np.maximum(buffer, arrays[key], out=buffer)

    def _rescale(self, new_reference_weight: float) -> None:
        factor = self._reference_weight / new_reference_weight
        for buffer in self._buffers.values():
            if buffer.dtype.kind in "fc":
                np.multiply(buffer, factor, out=buffer)
        logger.debug("rescaled the weighted sum from reference weight %g to %g",
                     self._reference_weight, new_reference_weight)
        self._reference_weight = new_reference_weight


def weighted_fedavg(contributions: Iterable[tuple[Mapping[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    """Return the weighted FedAvg of ``(params, aggregation_weight)`` pairs, streaming over the iterable.

    Raises:
        NoValidContributions: If the iterable is empty.
    """
    aggregator = WeightedFedAvg()
    for params, aggregation_weight in contributions:
        aggregator.add(params, aggregation_weight)
    return aggregator.result()


@contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with torch's intra-op thread count set to ``num_threads``, then restore it."""
    if num_threads is None:
        yield
        return
    with _THREADS_LOCK:
        previous = torch.get_num_threads()
        if previous == num_threads:
            yield
            return
        torch.set_num_threads(num_threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    """Return a tensor that shares memory with ``array``, copying only arrays that torch cannot view."""
    if not array.dtype.isnative:
        # torch cannot view non-native byte order; this copies one array of one contribution.
        array = array.astype(array.dtype.newbyteorder("="))
    elif any(stride < 0 for stride in array.strides):
        array = np.ascontiguousarray(array)  # torch cannot view negative strides, for example a reversed view
    if array.flags.writeable:
        return torch.from_numpy(array)
    # torch warns that it cannot mark a tensor read-only. The tensor is only read, so the view is safe.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def _accumulator_dtype(dtype: np.dtype) -> np.dtype:
    if dtype.kind in "fc":
        return np.result_type(dtype, np.float32)
    return dtype


def _check_weight(aggregation_weight: float) -> float:
    if isinstance(aggregation_weight, bool) or not isinstance(aggregation_weight, numbers.Real):
        raise InvalidSetting(
            f"aggregation_weight is {aggregation_weight!r} of type {type(aggregation_weight).__name__}; "
            "expected a finite number greater than zero"
        )
    weight = float(aggregation_weight)
    if not math.isfinite(weight) or weight <= 0.0:
        raise InvalidSetting(
            f"aggregation_weight is {aggregation_weight!r}; expected a finite number greater than zero "
            "(sites with no examples must be left out, not added with weight 0)"
        )
    return weight
