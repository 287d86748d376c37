"""The signed manifest of a kit: its format, its signature by the root CA, and certificate fingerprints.

``consortia-manifest.json`` names the participant and the certificate and lists the SHA-256 of every other file of
the kit. ``consortia-manifest.sig`` contains the base64 signature of the manifest's exact bytes by the consortium's root
CA key: RSASSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt for RSA keys (FLARE 2.9 generates 2048-bit RSA
keys in ``nvflare.lighter.utils.generate_keys``), ECDSA with SHA-256 for EC keys.

Fingerprints are printed as ``openssl x509 -fingerprint -sha256`` prints them, so hospital IT can compare them with
OpenSSL's output.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from pydantic import BaseModel, ConfigDict

from provisioning.kit_archive import KitError

MANIFEST_NAME = "consortia-manifest.json"
SIGNATURE_NAME = "consortia-manifest.sig"

SignatureAlgorithm = Literal["RSASSA-PSS-SHA256", "ECDSA-SHA256"]


class CertificateInfo(BaseModel):
    """The participant certificate as recorded in a manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str
    subject_cn: str
    serial: str
    sha256_fingerprint: str
    not_valid_before: datetime
    not_valid_after: datetime


class KitManifest(BaseModel):
    """Contents of ``consortia-manifest.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["consortia-kit-manifest"] = "consortia-kit-manifest"
    version: Literal[1] = 1
    project: str
    participant: str
    role: str
    issued_at: datetime
    issued_by: str
    root_ca_sha256: str
    signature_algorithm: SignatureAlgorithm
    certificate: CertificateInfo
    files: dict[str, str]


def fingerprint(cert: x509.Certificate) -> str:
    """Return the SHA-256 fingerprint of ``cert`` as ``openssl x509 -fingerprint -sha256`` prints it."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def normalize_fingerprint(value: str) -> str:
    """Reduce a SHA-256 fingerprint in any common spelling to 64 lowercase hex digits.

    Raises:
        ValueError: when ``value`` is not a SHA-256 fingerprint.
    """
    text = value.strip().lower()
    for prefix in ("sha256 fingerprint=", "sha256:", "sha256="):
        text = text.removeprefix(prefix)
    digits = "".join(ch for ch in text if ch not in ": \t")
    if len(digits) != 64 or any(ch not in "0123456789abcdef" for ch in digits):
        raise ValueError(f"invalid SHA-256 fingerprint {value!r}: expected 64 hex digits, colons optional")
    return digits


def certificate_cn(cert: x509.Certificate) -> str:
    """Return the common name of a certificate's subject (empty when it has none)."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def signature_algorithm(key: object) -> SignatureAlgorithm:
    """Return the signature algorithm used with a root CA key of this type.

    Raises:
        KitError: when the key is neither RSA nor EC.
    """
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "RSASSA-PSS-SHA256"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return "ECDSA-SHA256"
    raise KitError(f"root CA key type {type(key).__name__} is not supported: use an RSA or EC root CA")


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


def sign(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """Sign ``data`` with a root CA private key."""
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, _pss(), hashes.SHA256())
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def signature_valid(public_key: object, signature: bytes, data: bytes) -> bool:
    """Return whether ``signature`` over ``data`` verifies with a root CA public key."""
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, _pss(), hashes.SHA256())
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        else:
            return False
    except InvalidSignature:
        return False
    return True
