"""Ed25519 signatures of reports by the service key, and their offline verification.

Every signature is a *signature statement*, a JSON object. It names the signed content by its SHA-256 digest and pins
the audit chain head the report was built from. Its ``signature`` field is an Ed25519 signature over the canonical
JSON of all its other fields (``admin_api.core.chain.canonical_json``)::

    {"version": 1, "algorithm": "Ed25519", "key_id": "<sha256 hex of the DER public key>",
     "content_type": "text/csv", "file_name": "job-1-report.csv", "sha256": "<hex>",
     "chain_head_seq": 42, "chain_head_hash": "<hex>", "signed_at": "2026-12-04T19:14:21.000000Z",
     "signature": "<base64>"}

A JSON report embeds its statement under the key ``signature``; ``sha256`` is then the digest of the canonical JSON of
the report without that key, so re-indenting the file does not break it. CSV and PDF reports get the statement as a
sidecar file ``<report>.sig.json``, and ``sha256`` is the digest of the file's exact bytes.

The private key is a PKCS#8 PEM file created with mode 0600 on first use. It is never logged; errors name its path.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from admin_api.core.chain import canonical_json, format_timestamp
from admin_api.errors import AdminApiError, ConfigurationError

__all__ = [
    "SIDECAR_SUFFIX",
    "SIGNATURE_ALGORITHM",
    "SIGNATURE_FIELD",
    "ReportSigner",
    "SignatureStatement",
    "SignatureVerificationError",
    "key_id_of",
    "load_public_key",
    "parse_statement_file",
    "report_digest",
    "resolve_signing_key_path",
    "verify_json_report",
    "verify_statement",
]

logger = logging.getLogger(__name__)

SIGNATURE_ALGORITHM = "Ed25519"
SIGNATURE_FIELD = "signature"
"""Key under which a JSON report embeds its signature statement."""
SIDECAR_SUFFIX = ".sig.json"
"""Suffix of the signature statement file written beside a CSV or PDF report."""
STATEMENT_VERSION = 1
DEFAULT_KEY_FILE = Path("secrets") / "report_signing_key.pem"
"""Key path relative to the workspace, used when no explicit key path is configured."""


class SignatureVerificationError(AdminApiError):
    """A report or its signature statement failed verification; the message names the reason."""


@dataclass(frozen=True, slots=True)
class SignatureStatement:
    """The signed facts about one report file (see the module docstring for the JSON form)."""

    key_id: str
    content_type: str
    file_name: str
    sha256: str
    chain_head_seq: int | None
    chain_head_hash: str | None
    signed_at: str
    signature: str
    version: int = STATEMENT_VERSION
    algorithm: str = SIGNATURE_ALGORITHM

    def unsigned_fields(self) -> dict[str, Any]:
        """Return every field except ``signature``: the object whose canonical JSON is signed."""
        return {
            "version": self.version,
            "algorithm": self.algorithm,
            "key_id": self.key_id,
            "content_type": self.content_type,
            "file_name": self.file_name,
            "sha256": self.sha256,
            "chain_head_seq": self.chain_head_seq,
            "chain_head_hash": self.chain_head_hash,
            "signed_at": self.signed_at,
        }

    def to_json(self) -> dict[str, Any]:
        """Return the statement as a JSON object."""
        return {**self.unsigned_fields(), "signature": self.signature}

    @classmethod
    def from_json(cls, data: Any) -> SignatureStatement:
        """Parse a statement.

        Raises:
            SignatureVerificationError: A field is missing or has the wrong type.
        """
        if not isinstance(data, dict):
            raise SignatureVerificationError(f"signature statement is a {type(data).__name__}, expected a JSON object")
        expected: dict[str, tuple[type, ...]] = {
            "version": (int,),
            "algorithm": (str,),
            "key_id": (str,),
            "content_type": (str,),
            "file_name": (str,),
            "sha256": (str,),
            "chain_head_seq": (int, type(None)),
            "chain_head_hash": (str, type(None)),
            "signed_at": (str,),
            "signature": (str,),
        }
        for name, types in expected.items():
            if name not in data:
                raise SignatureVerificationError(
                    f"signature statement has no {name!r} field; it is not a report signature"
                )
            if not isinstance(data[name], types) or isinstance(data[name], bool):
                raise SignatureVerificationError(
                    f"signature statement field {name!r} is {data[name]!r}, expected {' or '.join(t.__name__ for t in types)}"
                )
        if data["version"] != STATEMENT_VERSION or data["algorithm"] != SIGNATURE_ALGORITHM:
            raise SignatureVerificationError(
                f"unsupported signature statement version {data['version']!r} with algorithm {data['algorithm']!r}; "
                f"this verifier supports version {STATEMENT_VERSION} with {SIGNATURE_ALGORITHM}"
            )
        return cls(**{name: data[name] for name in expected})


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """Return the key id: SHA-256 of the DER SubjectPublicKeyInfo encoding, as 64 hex characters."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def report_digest(report: dict[str, Any]) -> str:
    """Return the SHA-256 hex digest of a JSON report's canonical JSON, without its ``signature`` field."""
    unsigned = {key: value for key, value in report.items() if key != SIGNATURE_FIELD}
    return hashlib.sha256(canonical_json(unsigned)).hexdigest()


def resolve_signing_key_path(key_path: Path | None, workspace: Path | None) -> Path:
    """Return where the service's signing key lives: ``key_path``, else ``<workspace>/secrets/report_signing_key.pem``.

    Raises:
        ConfigurationError: Neither is set.
    """
    if key_path is not None:
        return key_path
    if workspace is not None:
        return workspace / DEFAULT_KEY_FILE
    raise ConfigurationError(
        "no report signing key configured; set CONSORTIA_REPORT_SIGNING_KEY to a PEM file path, or "
        "CONSORTIA_WORKSPACE so the key is created at <workspace>/secrets/report_signing_key.pem"
    )


def _create_key_file(path: Path) -> Ed25519PrivateKey:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    # O_EXCL: when two processes race, the second one fails here and loads the first one's key instead.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(pem)
        stream.flush()
        os.fsync(stream.fileno())
    logger.info("created report signing key %s (key id %s)", path, key_id_of(key.public_key()))
    return key


def _load_key_file(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"report signing key {path} is not an unencrypted PEM private key ({type(exc).__name__}); "
            "restore the file from backup, or move it away so a new key is created"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(
            f"report signing key {path} contains a {type(key).__name__}, expected an Ed25519 key; "
            "point CONSORTIA_REPORT_SIGNING_KEY at an Ed25519 PEM file"
        )
    return key


class ReportSigner:
    """Signs reports with the service key, creating the key file on first use.

    Args:
        key_path: PEM file of the Ed25519 private key; created with mode 0600 when missing.

    Raises:
        ConfigurationError: The file exists but is not an Ed25519 PEM private key, or cannot be created.
    """

    _creation_lock = threading.Lock()

    def __init__(self, key_path: Path) -> None:
        self.key_path = key_path
        with self._creation_lock:
            try:
                self._private_key = _create_key_file(key_path) if not key_path.exists() else _load_key_file(key_path)
            except FileExistsError:
                self._private_key = _load_key_file(key_path)
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot create the report signing key at {key_path}: {exc.strerror}; "
                    "make its folder writable by the service or set CONSORTIA_REPORT_SIGNING_KEY"
                ) from None
        self.public_key = self._private_key.public_key()
        self.key_id = key_id_of(self.public_key)

    def public_key_pem(self) -> bytes:
        """Return the public key as PEM (SubjectPublicKeyInfo)."""
        return self.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign_statement(
        self,
        *,
        content_type: str,
        file_name: str,
        sha256: str,
        chain_head_seq: int | None,
        chain_head_hash: str | None,
        signed_at: datetime,
    ) -> SignatureStatement:
        """Build and sign a statement about content with the digest ``sha256``."""
        unsigned = SignatureStatement(
            key_id=self.key_id,
            content_type=content_type,
            file_name=file_name,
            sha256=sha256,
            chain_head_seq=chain_head_seq,
            chain_head_hash=chain_head_hash,
            signed_at=format_timestamp(signed_at),
            signature="",
        )
        raw = self._private_key.sign(canonical_json(unsigned.unsigned_fields()))
        return SignatureStatement(**{**unsigned.unsigned_fields(), "signature": base64.b64encode(raw).decode("ascii")})

    def sign_bytes(
        self, content: bytes, *, content_type: str, file_name: str, chain_head: tuple[int | None, str | None],
        signed_at: datetime,
    ) -> SignatureStatement:  # fmt: skip
        """Sign the exact bytes of a CSV or PDF report; the statement goes into a ``.sig.json`` sidecar."""
        return self.sign_statement(
            content_type=content_type,
            file_name=file_name,
            sha256=hashlib.sha256(content).hexdigest(),
            chain_head_seq=chain_head[0],
            chain_head_hash=chain_head[1],
            signed_at=signed_at,
        )

    def sign_json_report(self, report: dict[str, Any], *, file_name: str, signed_at: datetime) -> dict[str, Any]:
        """Return a copy of a JSON report with its signature statement embedded under ``signature``.

        The chain head is read from the report's ``chain`` object (``head_seq``, ``head_hash``).
        """
        chain = report.get("chain") or {}
        statement = self.sign_statement(
            content_type="application/json",
            file_name=file_name,
            sha256=report_digest(report),
            chain_head_seq=chain.get("head_seq"),
            chain_head_hash=chain.get("head_hash"),
            signed_at=signed_at,
        )
        return {
            **{key: value for key, value in report.items() if key != SIGNATURE_FIELD},
            SIGNATURE_FIELD: statement.to_json(),
        }


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """Parse a PEM public key.

    Raises:
        SignatureVerificationError: The PEM is not an Ed25519 public key.
    """
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise SignatureVerificationError(f"public key is not a valid PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureVerificationError(f"public key is a {type(key).__name__}, expected an Ed25519 public key")
    return key


def verify_statement(statement: SignatureStatement, public_key: Ed25519PublicKey, *, sha256: str) -> None:
    """Check that ``statement`` is signed by ``public_key`` and names content with the digest ``sha256``.

    Raises:
        SignatureVerificationError: The key id, the digest or the signature does not match; the message names which.
    """
    expected_key_id = key_id_of(public_key)
    if statement.key_id != expected_key_id:
        raise SignatureVerificationError(
            f"key mismatch: the report was signed by key {statement.key_id}, but the public key given has id "
            f"{expected_key_id}; fetch the public key of the service that issued the report"
        )
    if statement.sha256 != sha256:
        raise SignatureVerificationError(
            f"digest mismatch: the content has SHA-256 {sha256}, but the signature covers {statement.sha256}; "
            "the report was changed after it was signed"
        )
    try:
        raw = base64.b64decode(statement.signature, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureVerificationError("signature is not valid base64; the statement was damaged") from None
    try:
        public_key.verify(raw, canonical_json(statement.unsigned_fields()))
    except InvalidSignature:
        raise SignatureVerificationError(
            "invalid signature: the statement's fields were changed after signing, or another key signed it"
        ) from None


def verify_json_report(report: Any, public_key: Ed25519PublicKey) -> SignatureStatement:
    """Verify a JSON report with an embedded statement, including that it pins the report's own chain head.

    Returns:
        The verified statement.

    Raises:
        SignatureVerificationError: The report is unsigned or any check fails.
    """
    if not isinstance(report, dict) or SIGNATURE_FIELD not in report:
        raise SignatureVerificationError(
            f"the JSON report has no {SIGNATURE_FIELD!r} field; download it from /api/v1/reports/jobs/<job_id>"
        )
    statement = SignatureStatement.from_json(report[SIGNATURE_FIELD])
    verify_statement(statement, public_key, sha256=report_digest(report))
    chain = report.get("chain") or {}
    if (chain.get("head_seq"), chain.get("head_hash")) != (statement.chain_head_seq, statement.chain_head_hash):
        raise SignatureVerificationError(
            f"chain head mismatch: the report shows {chain.get('head_hash')!r} but the signature pins "
            f"{statement.chain_head_hash!r}"
        )
    return statement


def parse_statement_file(text: str) -> SignatureStatement:
    """Parse the text of a ``.sig.json`` sidecar.

    Raises:
        SignatureVerificationError: It is not JSON or not a statement.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SignatureVerificationError(f"signature file is not valid JSON: {exc}") from None
    return SignatureStatement.from_json(data)
