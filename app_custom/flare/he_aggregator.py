"""One round of CKKS secure aggregation on the server, behind the controller's round-aggregator interface.

Sites send their params multiplied by their ``num_examples`` and encrypted (``app_custom.core.privacy.he``). The
server adds the ciphertexts of the sites present in the round and sends the sum back with the present sites'
total ``num_examples``, and each site decrypts and divides. A site that drops out is simply absent from the sum
and from the total, so the result is the FedAvg of the sites present.

The contribution checks of ``app_custom.core.validation`` read values, which the server cannot see. On
ciphertexts the server checks instead: the declared layer shapes equal the global model's, the params are packed
under one key or have one key per layer, each vector has ceil(size / slots) ciphertexts, each ciphertext loads
under the public context and contains the expected number of values, and ``num_examples`` is a finite number > 0.
NaN, out-of-range or poisoned values cannot be detected, and neither can a ciphertext made with another key,
which decrypts to garbage at every site.

This module has no FLARE import.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import tenseal as ts

from app_custom.core.errors import ContributionRejected, NoValidContributions
from app_custom.core.privacy.errors import HEConfigError, InvalidPrivacyInput
from app_custom.core.privacy.he import PACKED_KEY, HEContext, aggregate_encrypted, chunk_lengths
from app_custom.core.validation import check_num_examples

__all__ = ["HE_META_ENCRYPTED", "HE_META_SHAPES", "HE_META_TOTAL_WEIGHT", "EncryptedRoundAggregator", "shapes_of"]

logger = logging.getLogger(__name__)

# Keys of the model meta that travels with encrypted params, in both directions.
HE_META_ENCRYPTED = "he_encrypted"
HE_META_SHAPES = "he_shapes"
HE_META_TOTAL_WEIGHT = "he_total_weight"

Encrypted = Mapping[str, Sequence[bytes]]


def shapes_of(params: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Return each layer's shape, as the meta of encrypted params carries it."""
    return {key: tuple(int(size) for size in np.shape(value)) for key, value in params.items()}


class EncryptedRoundAggregator:
    """Sums one round's encrypted contributions with the public context; drop-in for ``RoundAggregator``.

    Privacy: the server sees ciphertexts and each site's ``num_examples``, never params. A context that contains
    the secret key raises ``HEConfigError`` at construction, so this class cannot run where it could decrypt.

    Args:
        context: The public CKKS context from the server's kit.
    """

    buffers_models = False

    def __init__(self, context: HEContext) -> None:
        if context.is_private:
            raise HEConfigError(
                "the server's CKKS context contains the secret key; provision the server kit again so that it "
                "holds only server_context.tenseal without a secret key"
            )
        self.context = context
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._sum: dict[str, list[bytes]] | None = None
        self._count = 0
        self._total_weight = 0.0

    @property
    def count(self) -> int:
        """Number of contributions added this round."""
        return self._count

    @property
    def total_weight(self) -> float:
        """Sum of the ``num_examples`` of the contributions added this round."""
        return self._total_weight

    def start_round(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Set the layer shapes contributions must have and forget the previous round."""
        self.shapes = {key: tuple(shape) for key, shape in shapes.items()}
        self.reset()

    def reset(self) -> None:
        """Forget this round's contributions; the shapes stay set."""
        self._sum = None
        self._count = 0
        self._total_weight = 0.0

    def check(self, encrypted: Encrypted, num_examples: object, shapes: object) -> float:
        """Check an encrypted contribution's structure and weight; return the weight.

        Accepts packed params (the one key ``PACKED_KEY``) and params with one key per layer.

        Raises:
            ContributionRejected: ``bad_num_examples``, ``missing_key``, ``unexpected_key``, ``shape_mismatch``
                (declared shapes, ciphertext counts or lengths differ) or ``dtype_mismatch`` (a chunk is not a
                CKKS vector for this context).
        """
        weight = float(check_num_examples(num_examples))  # type: ignore[arg-type]  # checks any object
        if not isinstance(encrypted, Mapping):
            raise ContributionRejected("dtype_mismatch", f"encrypted params are {type(encrypted).__name__}")
        packed = set(encrypted) == {PACKED_KEY}
        expected_keys = {PACKED_KEY} if packed else set(self.shapes)
        missing, unexpected = expected_keys - set(encrypted), set(encrypted) - expected_keys
        if missing:
            raise ContributionRejected("missing_key", f"layers {sorted(missing)} are missing", key=min(missing))
        if unexpected:
            raise ContributionRejected("unexpected_key", f"unknown layers {sorted(unexpected)}", key=min(unexpected))
        declared = {key: tuple(value) for key, value in shapes.items()} if isinstance(shapes, Mapping) else None
        if declared != self.shapes:
            raise ContributionRejected("shape_mismatch", f"declared shapes {declared} differ from {self.shapes}")
        for key, lengths in chunk_lengths(self.shapes, self.context.preset.slots, packed=packed).items():
            self._check_layer(key, encrypted[key], lengths)
        return weight

    def _check_layer(self, key: str, chunks: Sequence[bytes], lengths: list[int]) -> None:
        if not isinstance(chunks, Sequence) or len(chunks) != len(lengths):
            found = len(chunks) if isinstance(chunks, Sequence) else type(chunks).__name__
            raise ContributionRejected(
                "shape_mismatch", f"layer {key!r} has {found} ciphertexts, expected {len(lengths)}", key=key
            )
        for index, (chunk, length) in enumerate(zip(chunks, lengths, strict=True)):
            try:
                vector = ts.ckks_vector_from(self.context.context, chunk)
            except (ValueError, TypeError, RuntimeError) as error:
                raise ContributionRejected(
                    "dtype_mismatch", f"layer {key!r} chunk {index} is not a CKKS vector: {error}", key=key
                ) from None
            if vector.size() != length:
                raise ContributionRejected(
                    "shape_mismatch",
                    f"layer {key!r} chunk {index} holds {vector.size()} values, expected {length}",
                    key=key,
                )

    def add(self, site: str, encrypted: Encrypted, num_examples: object, shapes: object) -> None:
        """Check a contribution and add it to the encrypted running sum (one model's ciphertexts in memory).

        Raises:
            ContributionRejected: The contribution fails ``check``.
        """
        weight = self.check(encrypted, num_examples, shapes)
        contribution = {key: list(chunks) for key, chunks in encrypted.items()}
        try:
            self._sum = contribution if self._sum is None else aggregate_encrypted([self._sum, contribution], self.context)
        except InvalidPrivacyInput as error:
            raise ContributionRejected("shape_mismatch", f"site {site}: {error}") from None
        self._count += 1
        self._total_weight += weight

    def result(self, global_params: object = None) -> dict[str, list[bytes]]:
        """Return the encrypted sum of this round's contributions; divide by ``total_weight`` after decryption.

        Raises:
            NoValidContributions: No contribution was added.
        """
        if self._sum is None or self._count == 0:
            raise NoValidContributions("no valid encrypted contribution this round: no aggregate to send")
        logger.info("summed %d encrypted contributions", self._count)
        return self._sum

    def result_meta(self) -> dict[str, object]:
        """Return the meta the sites need to decrypt the result: the flag, shapes and total weight."""
        return {
            HE_META_ENCRYPTED: True,
            HE_META_SHAPES: {key: list(shape) for key, shape in self.shapes.items()},
            HE_META_TOTAL_WEIGHT: self._total_weight,
        }
