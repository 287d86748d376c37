"""Secure aggregation of model parameters with CKKS homomorphic encryption (TenSEAL 0.3).

CKKS (Cheon, Kim, Kim and Song 2017, "Homomorphic Encryption for Arithmetic of Approximate Numbers") encrypts
vectors of N/2 real numbers per ciphertext and adds ciphertexts without decrypting them. All sites share one
secret key. The server has only the public context, so it can add contributions but cannot read them.

Aggregation weights are applied at the site. Each site multiplies its params by its ``aggregation_weight`` (for
example ``num_examples``) before encrypting. The server adds the ciphertexts of the sites present in the round,
and a site decrypts the sum and divides it by the total weight of those sites, which travels in plaintext. So the
server needs no ciphertext multiplication (no rescaling, no relinearization keys), and the weighted FedAvg
(McMahan et al. 2017) is exact up to the preset's stated error. The server learns each site's aggregation weight.

By default ``encrypt_params`` packs every layer into one vector (layers in sorted name order, each flattened in C
order) and splits it into ciphertexts of N/2 slots, under the one key ``PACKED_KEY``. The demo model's 4,865 params
then fill 2 ciphertexts where one ciphertext per layer needed 6. With ``pack=False`` each layer gets its own
ciphertexts. ``aggregate_encrypted`` and ``decrypt_params`` accept both layouts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import tenseal as ts
from pydantic import Field, FiniteFloat, model_validator

from app_custom.core.privacy._validation import PrivacyConfigModel, check_positive_finite
from app_custom.core.privacy.errors import HEConfigError, InvalidPrivacyInput

__all__ = [
    "CKKS_8192",
    "CKKS_16384",
    "PACKED_KEY",
    "PRESETS",
    "CKKSPreset",
    "HEContext",
    "aggregate_encrypted",
    "chunk_lengths",
    "decrypt_params",
    "encrypt_params",
    "get_preset",
    "load_context",
    "make_contexts",
]

logger = logging.getLogger(__name__)

# Largest total coefficient-modulus bit count per polynomial degree N for 128-bit classical security, from the
# HomomorphicEncryption.org security standard (Albrecht et al. 2018); SEAL's CoeffModulus::MaxBitCount(N, tc128).
_MAX_TOTAL_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
# The value bound must still hold for a sum of this many contributions.
_MAX_SITES = 1024
# The one key of packed params; a model layer cannot have this name.
PACKED_KEY = "__packed__"
# Bits left above the scale in the first modulus: values below 2**9 still decode after every rescale.
_MIN_HEADROOM_BITS = 10


class CKKSPreset(PrivacyConfigModel):
    """CKKS parameters that are checked to be secure and to decrypt a sum of contributions correctly.

    Validation rejects:

    - a degree N without a 128-bit security bound, or a total modulus above that bound;
    - fewer than two moduli, or moduli outside 20..60 bits (SEAL's prime limit is 60);
    - a scale that differs from a middle modulus, because a rescale would then change the scale;
    - a first modulus less than ``_MIN_HEADROOM_BITS`` above the scale;
    - a ``max_abs_value`` whose sum over ``_MAX_SITES`` sites would overflow the data modulus.

    ``self_check`` then measures the decryption error against ``atol``.

    Privacy: protects site params against the server, which sees only ciphertexts. An unsafe or inaccurate
    preset raises ``HEConfigError`` at construction or in ``self_check``, before any params are encrypted.

    Attributes:
        name: Preset name.
        poly_modulus_degree: N; one ciphertext contains N/2 values.
        coeff_mod_bit_sizes: Bit sizes of the coefficient moduli; the last is SEAL's special (key-switching) prime.
        scale_bits: log2 of the CKKS scale.
        max_abs_value: Largest |aggregation_weight * value| a site may encrypt.
        atol: Largest absolute error ``self_check`` accepts in a decrypted sum of three contributions.
    """

    name: str = Field(min_length=1)
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    max_abs_value: FiniteFloat = Field(gt=0)
    atol: FiniteFloat = Field(gt=0)

    _error_type: ClassVar[type[HEConfigError]] = HEConfigError
    _hints: ClassVar[dict[str, str]] = {
        "poly_modulus_degree": f"Use one of {sorted(_MAX_TOTAL_BITS_128)}.",
        "coeff_mod_bit_sizes": "Use for example (60, 40, 40) with N=8192.",
        "scale_bits": "Use the bit size of the middle moduli, for example 40.",
    }

    @model_validator(mode="after")
    def _check_security_and_precision(self) -> CKKSPreset:
        degree, bits, scale = self.poly_modulus_degree, self.coeff_mod_bit_sizes, self.scale_bits
        if degree not in _MAX_TOTAL_BITS_128:
            raise ValueError(
                f"poly_modulus_degree={degree} has no 128-bit security bound; use one of {sorted(_MAX_TOTAL_BITS_128)}"
            )
        if len(bits) < 2 or any(not 20 <= size <= 60 for size in bits):
            raise ValueError(f"coeff_mod_bit_sizes={bits} must list at least two moduli of 20..60 bits")
        if sum(bits) > _MAX_TOTAL_BITS_128[degree]:
            raise ValueError(
                f"coeff_mod_bit_sizes={bits} total {sum(bits)} bits, above the {_MAX_TOTAL_BITS_128[degree]} bits "
                f"allowed at N={degree} for 128-bit security; use fewer or smaller moduli or a larger N"
            )
        if not 20 <= scale <= 60:
            raise ValueError(f"scale_bits={scale} must be in 20..60")
        if any(size != scale for size in bits[1:-1]):
            raise ValueError(
                f"scale_bits={scale} must equal every middle modulus {bits[1:-1]}, so a rescale "
                "keeps the scale; set scale_bits to their bit size"
            )
        if bits[0] < scale + _MIN_HEADROOM_BITS:
            raise ValueError(
                f"first modulus of {bits[0]} bits leaves under {_MIN_HEADROOM_BITS} bits above "
                f"scale_bits={scale}; decrypted values would wrap around"
            )
        data_bits = sum(bits[:-1])
        if math.log2(self.max_abs_value * _MAX_SITES) + scale >= data_bits - 1:
            raise ValueError(
                f"max_abs_value={self.max_abs_value:g} summed over {_MAX_SITES} sites does not fit "
                f"the {data_bits}-bit data modulus at scale 2**{scale}; lower max_abs_value"
            )
        return self

    @property
    def slots(self) -> int:
        """Number of values one ciphertext contains (N/2)."""
        return self.poly_modulus_degree // 2

    def self_check(self, *, seed: int = 0) -> float:
        """Encrypt known values at three sites, aggregate with the public context, decrypt and check the error.

        The values are uniform in ``[-max_abs_value, max_abs_value]`` and span two ciphertexts. The check also
        confirms that the public context contains no secret key and cannot decrypt.

        Privacy: catches a preset or TenSEAL build that would decrypt to wrong values or leak the secret key to
        the server, before real params are encrypted.

        Returns:
            The largest absolute error measured.

        Raises:
            HEConfigError: The error exceeds ``atol`` or the public context can decrypt.
        """
        secret_bytes, public_bytes = make_contexts(self)
        secret, public = load_context(secret_bytes, self), load_context(public_bytes, self)
        rng = np.random.default_rng(seed)
        size = self.slots + 17
        values = [rng.uniform(-self.max_abs_value, self.max_abs_value, size) for _ in range(3)]
        encrypted = [encrypt_params({"check": value}, secret, 1.0) for value in values]
        aggregate = aggregate_encrypted(encrypted, public)
        decrypted = decrypt_params(aggregate, secret, {"check": (size,)}, total_weight=1.0)["check"]
        error = float(np.max(np.abs(decrypted - np.sum(values, axis=0))))
        if not error <= self.atol:
            raise HEConfigError(
                f"preset {self.name!r} decrypted a sum with error {error:.3g}, above atol="
                f"{self.atol:.3g}; use a larger scale_bits or a smaller max_abs_value"
            )
        try:
            ts.ckks_vector_from(public.context, aggregate[PACKED_KEY][0]).decrypt()
        except ValueError:
            return error
        raise HEConfigError(f"preset {self.name!r}: the public context decrypted a ciphertext; do not use it")


CKKS_8192 = CKKSPreset(
    name="ckks_8192",
    poly_modulus_degree=8192,
    coeff_mod_bit_sizes=(60, 40, 40),
    scale_bits=40,
    max_abs_value=1e6,
    atol=1e-6,
)
"""FLARE 2.9's HEBuilder preset: 4,096 values per ciphertext of about 235 KB; measured error about 2e-8."""

CKKS_16384 = CKKSPreset(
    name="ckks_16384",
    poly_modulus_degree=16384,
    coeff_mod_bit_sizes=(60, 50, 60),
    scale_bits=50,
    max_abs_value=1e6,
    atol=1e-7,
)
"""More precision: 8,192 values per ciphertext of about 500 KB; measured error about 3e-11 for values up to 10."""

PRESETS: dict[str, CKKSPreset] = {preset.name: preset for preset in (CKKS_8192, CKKS_16384)}


def get_preset(name: str) -> CKKSPreset:
    """Return the preset called ``name``.

    Raises:
        HEConfigError: No preset has that name.
    """
    if name not in PRESETS:
        raise HEConfigError(f"unknown CKKS preset {name!r}; use one of {sorted(PRESETS)}")
    return PRESETS[name]


@dataclass(frozen=True)
class HEContext:
    """A TenSEAL context together with the preset it was made from (its slot count and value bound)."""

    preset: CKKSPreset
    context: ts.Context

    @property
    def is_private(self) -> bool:
        """Whether the context contains the secret key."""
        return bool(self.context.is_private())


def make_contexts(preset: CKKSPreset) -> tuple[bytes, bytes]:
    """Generate a key pair and return (secret context, public context), both serialized.

    No relinearization or Galois keys are generated into the output, because aggregation only adds ciphertexts.

    Privacy: the secret context lets its holder decrypt every site's params; it goes to sites only. The public
    context is checked to contain no secret key, before and after serialization, so it is safe for the server.

    Raises:
        HEConfigError: The public context still contains a secret key.
    """
    context = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=preset.poly_modulus_degree,
        coeff_mod_bit_sizes=list(preset.coeff_mod_bit_sizes),
    )
    context.global_scale = 2.0**preset.scale_bits
    secret_bytes = context.serialize(save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
    public = context.copy()
    public.make_context_public()
    public_bytes = public.serialize(save_secret_key=False, save_galois_keys=False, save_relin_keys=False)
    if public.is_private() or ts.context_from(public_bytes).is_private():
        raise HEConfigError("the public context still contains the secret key; do not send it to the server")
    return secret_bytes, public_bytes


def load_context(data: bytes, preset: CKKSPreset) -> HEContext:
    """Deserialize a context and check that it matches ``preset``.

    Privacy: a context with other parameters could have fewer slots, a weaker modulus or another scale than the
    preset's checks assumed, so it raises ``HEConfigError`` instead of being used.

    Raises:
        HEConfigError: The bytes are not a TenSEAL CKKS context or do not match the preset.
    """
    try:
        context = ts.context_from(data)
        key_data = context.data.seal_context().key_context_data()
        degree = key_data.parms().poly_modulus_degree()
        total_bits = key_data.total_coeff_modulus_bit_count()
        scale = context.global_scale
    except (ValueError, TypeError, RuntimeError) as error:
        raise HEConfigError(f"cannot load a CKKS context from {len(data)} bytes: {error}") from None
    expected = (preset.poly_modulus_degree, sum(preset.coeff_mod_bit_sizes), 2.0**preset.scale_bits)
    if (degree, total_bits, scale) != expected:
        raise HEConfigError(
            f"context has N={degree}, {total_bits} modulus bits and scale {scale:g}, but preset {preset.name!r} "
            f"expects N={expected[0]}, {expected[1]} bits and scale {expected[2]:g}; load it with its own preset"
        )
    return HEContext(preset=preset, context=context)


def encrypt_params(
    params: Mapping[str, np.ndarray], ctx: HEContext, aggregation_weight: float, *, pack: bool = True
) -> dict[str, list[bytes]]:
    """Multiply params by ``aggregation_weight`` and encrypt them as lists of serialized CKKS vectors.

    With ``pack`` (the default) all layers, in sorted name order and each flattened in C order, form one vector
    under ``PACKED_KEY``. Without it each layer is a vector of its own. Each vector is split into chunks of
    ``ctx.preset.slots`` values.

    Privacy: protects the site's params against the server and the network. Non-finite values, a weighted value
    above the preset's ``max_abs_value`` (which could decrypt to a wrong aggregate) or an invalid weight raise
    before anything is encrypted.

    Raises:
        InvalidPrivacySetting: ``aggregation_weight`` is not a finite number > 0.
        InvalidPrivacyInput: Params are empty, not float arrays, non-finite or too large, or a layer is named
            ``PACKED_KEY``.
    """
    weight = check_positive_finite("aggregation_weight", aggregation_weight, "Use the site's num_examples.")
    if not isinstance(params, Mapping) or not params:
        raise InvalidPrivacyInput("params must be a non-empty mapping of layer name to array")
    if PACKED_KEY in params:
        raise InvalidPrivacyInput(f"a layer is named {PACKED_KEY!r}, the key of packed params; rename it")
    flat: dict[str, np.ndarray] = {}
    for key, array in params.items():
        if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.floating):
            raise InvalidPrivacyInput(f"params[{key!r}] must be a floating-point numpy array")
        weighted = array.astype(np.float64).ravel() * weight
        if not np.all(np.isfinite(weighted)):
            raise InvalidPrivacyInput(f"params[{key!r}] times aggregation_weight={weight} is not finite")
        if weighted.size and float(np.max(np.abs(weighted))) > ctx.preset.max_abs_value:
            raise InvalidPrivacyInput(
                f"params[{key!r}] times aggregation_weight={weight} reaches {np.max(np.abs(weighted)):.3g}, above "
                f"max_abs_value={ctx.preset.max_abs_value:g} of preset {ctx.preset.name!r}; use smaller weights"
            )
        flat[key] = weighted
    if pack:
        flat = {PACKED_KEY: np.concatenate([flat[key] for key in sorted(flat)])}
    slots = ctx.preset.slots
    encrypted: dict[str, list[bytes]] = {}
    for key, values in flat.items():
        chunks = []
        for start in range(0, values.size, slots):
            chunks.append(ts.ckks_vector(ctx.context, values[start : start + slots].tolist()).serialize())
        encrypted[key] = chunks
    return encrypted


def chunk_lengths(shapes: Mapping[str, tuple[int, ...]], slots: int, *, packed: bool) -> dict[str, list[int]]:
    """Return, for each key of encrypted params, the number of values in each of its ciphertexts.

    Args:
        shapes: Layer name to array shape.
        slots: Values per ciphertext (the preset's N/2).
        packed: Whether the params are packed under ``PACKED_KEY``.
    """
    sizes = {key: math.prod(shape) for key, shape in shapes.items()}
    if packed:
        sizes = {PACKED_KEY: sum(sizes.values())}
    return {key: [min(slots, size - start) for start in range(0, size, slots)] for key, size in sizes.items()}


def _load_vector(ctx: HEContext, data: bytes, where: str) -> ts.CKKSVector:
    try:
        return ts.ckks_vector_from(ctx.context, data)
    except (ValueError, TypeError, RuntimeError) as error:
        raise InvalidPrivacyInput(f"{where} is not a CKKS vector for this context: {error}") from None


def aggregate_encrypted(
    contributions: Sequence[Mapping[str, Sequence[bytes]]], ctx: HEContext
) -> dict[str, list[bytes]]:
    """Add the encrypted, pre-weighted params of the sites present in a round, without decrypting.

    Privacy: runs on the server with the public context, so the server never sees params. A context that contains
    the secret key raises ``HEConfigError``, because the server must not have it. Contributions with different layers or
    chunk lengths raise ``InvalidPrivacyInput`` instead of aggregating a partial model.

    Args:
        contributions: One ``encrypt_params`` result per site present; sites that dropped out are simply absent.
        ctx: The public context.

    Returns:
        Layer name to serialized CKKS vectors holding the sum. Divide by the present sites' total weight after
        decryption.

    Raises:
        HEConfigError: ``ctx`` contains the secret key.
        InvalidPrivacyInput: No contributions, or contributions that do not match.
    """
    if ctx.is_private:
        raise HEConfigError("aggregate_encrypted got a context with the secret key; give the server the public one")
    if not contributions:
        raise InvalidPrivacyInput("no encrypted contributions to aggregate; wait for at least one site")
    first = contributions[0]
    for index, contribution in enumerate(contributions):
        if set(contribution) != set(first) or any(len(contribution[key]) != len(first[key]) for key in first):
            raise InvalidPrivacyInput(f"contribution {index} differs from contribution 0 in layers or chunk counts")
    aggregate: dict[str, list[bytes]] = {}
    for key, chunks in first.items():
        aggregate[key] = []
        for chunk_index in range(len(chunks)):
            total = _load_vector(ctx, chunks[chunk_index], f"contribution 0 layer {key!r}")
            for index, contribution in enumerate(contributions[1:], start=1):
                vector = _load_vector(ctx, contribution[key][chunk_index], f"contribution {index} layer {key!r}")
                if vector.size() != total.size():
                    raise InvalidPrivacyInput(
                        f"contribution {index} layer {key!r} chunk {chunk_index} has "
                        f"{vector.size()} values, contribution 0 has {total.size()}"
                    )
                total += vector
            aggregate[key].append(total.serialize())
    return aggregate


def decrypt_params(
    encrypted: Mapping[str, Sequence[bytes]],
    ctx: HEContext,
    shapes: Mapping[str, tuple[int, ...]],
    total_weight: float,
) -> dict[str, np.ndarray]:
    """Decrypt an aggregate and divide by the total aggregation weight of the sites it contains.

    Accepts packed params (``PACKED_KEY``, layers in sorted name order) and one-vector-per-layer params.

    Privacy: only a holder of the secret context (a site) can run it. A public context raises ``HEConfigError``;
    a layer set, chunk count or length that does not match ``shapes`` raises ``InvalidPrivacyInput``.

    Args:
        encrypted: ``aggregate_encrypted`` output (or one site's ``encrypt_params`` output).
        ctx: The secret context.
        shapes: Layer name to array shape.
        total_weight: Sum of the aggregation weights of the sites present, > 0.

    Returns:
        Layer name to float64 array: the weighted mean of the present sites' params.

    Raises:
        HEConfigError: ``ctx`` contains no secret key.
        InvalidPrivacySetting: ``total_weight`` is not a finite number > 0.
        InvalidPrivacyInput: ``encrypted`` does not match ``shapes``.
    """
    if not ctx.is_private:
        raise HEConfigError("decrypt_params needs the secret context; the public context contains no secret key")
    total_weight = check_positive_finite("total_weight", total_weight, "Pass the sum of the present sites' weights.")
    packed = set(encrypted) == {PACKED_KEY}
    expected_keys = {PACKED_KEY} if packed else set(shapes)
    if set(encrypted) != expected_keys:
        raise InvalidPrivacyInput(f"encrypted layers {sorted(encrypted)} differ from shapes {sorted(shapes)}")
    flat: dict[str, np.ndarray] = {}
    for key, lengths in chunk_lengths(shapes, ctx.preset.slots, packed=packed).items():
        if len(encrypted[key]) != len(lengths):
            raise InvalidPrivacyInput(
                f"layer {key!r} has {len(encrypted[key])} chunks, expected {len(lengths)} for shapes "
                f"{shapes[key] if key in shapes else dict(shapes)}"
            )
        parts = [np.asarray(_load_vector(ctx, chunk, f"layer {key!r}").decrypt()) for chunk in encrypted[key]]
        values = np.concatenate(parts) if parts else np.zeros(0)
        if values.size != sum(lengths):
            raise InvalidPrivacyInput(f"layer {key!r} decrypted to {values.size} values, expected {sum(lengths)}")
        flat[key] = values / total_weight
    if not packed:
        return {key: flat[key].reshape(shape) for key, shape in shapes.items()}
    result: dict[str, np.ndarray] = {}
    offset = 0
    for key in sorted(shapes):
        size = math.prod(shapes[key])
        result[key] = flat[PACKED_KEY][offset : offset + size].reshape(shapes[key])
        offset += size
    return {key: result[key] for key in shapes}
