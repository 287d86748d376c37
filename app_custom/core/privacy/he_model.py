"""The server's copy of an HE job's global model: the encrypted aggregate, saved each round, decrypted at a site.

The server of a CKKS job holds only the public context, so it cannot decrypt the global model. After each round it
saves the encrypted sum of the sites' weighted params with what a site needs to decrypt it (the preset, the layer
shapes and the total aggregation weight) in one JSON file. A holder of the secret context (any site kit) recovers
the global model with ``decrypt_model_file`` or from the command line::

    python -m app_custom.core.privacy.he_model MODEL_FILE --kit SITE_KIT_DIR --output global_model.npz

The output is ``.npz`` (numpy) or ``.pt`` (a torch ``state_dict``), chosen by its suffix.

Privacy: the file contains ciphertexts and plaintext metadata only, never a context or a key, so it is as safe to
keep on the server as the uploads it was summed from. The total weight and the shapes it contains are the values
the server already learns during the round.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app_custom.core.privacy.errors import HEConfigError, InvalidPrivacyInput, PrivacyError
from app_custom.core.privacy.he import HEContext, decrypt_params, get_preset, load_context

__all__ = [
    "ENCRYPTED_MODEL_FILE",
    "EncryptedModel",
    "decrypt_model",
    "decrypt_model_file",
    "load_encrypted_model",
    "save_encrypted_model",
]

# File name of the encrypted global model in the server's app folder of the job.
ENCRYPTED_MODEL_FILE = "encrypted_global_model.json"
# File name of the secret context in a site kit's startup folder (written by FLARE's HEBuilder).
SITE_CONTEXT_FILE = "client_context.tenseal"
_FORMAT = "consortia-ckks-aggregate"
_VERSION = 1


@dataclass(frozen=True)
class EncryptedModel:
    """An encrypted aggregate with the metadata a site needs to decrypt it.

    Attributes:
        preset: Name of the CKKS preset the ciphertexts were made with.
        round: The round (0-based) whose aggregate this is.
        total_weight: Sum of the aggregation weights of the sites in the aggregate; decryption divides by it.
        shapes: Layer name to array shape.
        ciphertexts: Key (a layer name, or the packed key) to serialized CKKS vectors.
    """

    preset: str
    round: int
    total_weight: float
    shapes: dict[str, tuple[int, ...]]
    ciphertexts: dict[str, list[bytes]]


def save_encrypted_model(path: Path, model: EncryptedModel) -> None:
    """Write ``model`` to ``path`` as JSON with base64 ciphertexts, replacing any earlier file atomically.

    Raises:
        OSError: The file cannot be written.
    """
    document = {
        "format": _FORMAT,
        "version": _VERSION,
        "preset": model.preset,
        "round": model.round,
        "total_weight": model.total_weight,
        "shapes": {key: list(shape) for key, shape in model.shapes.items()},
        "ciphertexts": {
            key: [base64.b64encode(chunk).decode("ascii") for chunk in chunks]
            for key, chunks in model.ciphertexts.items()
        },
    }
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(document), encoding="utf-8")
    os.replace(partial, path)


def _field(document: Mapping[str, Any], name: str, kind: type | tuple[type, ...], path: Path) -> Any:
    value = document.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidPrivacyInput(f"invalid encrypted model {path}: field {name!r} is {value!r}")
    return value


def _shapes(raw: Mapping[str, Any], path: Path) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for key, shape in raw.items():
        if not isinstance(shape, list) or not all(isinstance(size, int) and size >= 0 for size in shape):
            raise InvalidPrivacyInput(f"invalid encrypted model {path}: shape of layer {key!r} is {shape!r}")
        shapes[key] = tuple(shape)
    return shapes


def _ciphertexts(raw: Mapping[str, Any], path: Path) -> dict[str, list[bytes]]:
    ciphertexts: dict[str, list[bytes]] = {}
    for key, chunks in raw.items():
        if not isinstance(chunks, list) or not all(isinstance(chunk, str) for chunk in chunks):
            raise InvalidPrivacyInput(f"invalid encrypted model {path}: ciphertexts of {key!r} are not a list")
        try:
            ciphertexts[key] = [base64.b64decode(chunk, validate=True) for chunk in chunks]
        except binascii.Error as error:
            raise InvalidPrivacyInput(f"invalid encrypted model {path}: ciphertexts of {key!r}: {error}") from None
    return ciphertexts


def load_encrypted_model(path: Path) -> EncryptedModel:
    """Read a file written by ``save_encrypted_model``.

    Raises:
        InvalidPrivacyInput: The file is missing, not JSON, of another format or version, or has invalid fields.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidPrivacyInput(f"encrypted model {path} not found; check the path") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidPrivacyInput(f"cannot read encrypted model {path}: {error}") from None
    if not isinstance(document, dict) or document.get("format") != _FORMAT:
        raise InvalidPrivacyInput(f"invalid encrypted model {path}: expected format {_FORMAT!r}")
    if document.get("version") != _VERSION:
        raise InvalidPrivacyInput(
            f"encrypted model {path} has version {document.get('version')!r}; this code reads version {_VERSION}"
        )
    total_weight = float(_field(document, "total_weight", (int, float), path))
    if not (math.isfinite(total_weight) and total_weight > 0):
        raise InvalidPrivacyInput(f"invalid encrypted model {path}: total_weight is {total_weight!r}")
    return EncryptedModel(
        preset=_field(document, "preset", str, path),
        round=_field(document, "round", int, path),
        total_weight=total_weight,
        shapes=_shapes(_field(document, "shapes", dict, path), path),
        ciphertexts=_ciphertexts(_field(document, "ciphertexts", dict, path), path),
    )


def decrypt_model(model: EncryptedModel, context: HEContext) -> dict[str, np.ndarray]:
    """Decrypt an encrypted global model into layer name to float32 array: the FedAvg of the sites in it.

    Privacy: needs the secret context, so only a site can run it. A public context raises ``HEConfigError``.

    Raises:
        HEConfigError: ``context`` has no secret key or another preset than the model.
        InvalidPrivacyInput: The ciphertexts do not match the shapes.
    """
    if context.preset.name != model.preset:
        raise HEConfigError(
            f"the encrypted model uses preset {model.preset!r}, the context preset {context.preset.name!r}; "
            "load the context with the model's preset"
        )
    decrypted = decrypt_params(model.ciphertexts, context, model.shapes, model.total_weight)
    return {key: value.astype(np.float32) for key, value in decrypted.items()}


def decrypt_model_file(path: Path, kit_dir: Path) -> dict[str, np.ndarray]:
    """Decrypt the encrypted global model at ``path`` with the secret context of the site kit in ``kit_dir``.

    Reads ``kit_dir/startup/client_context.tenseal`` directly. Verify the kit first (``consortia kit verify``),
    because this function does not check the kit's signature.

    Raises:
        HEConfigError: The kit has no secret context, or the context does not match the model's preset.
        InvalidPrivacyInput: The model file is invalid.
    """
    model = load_encrypted_model(path)
    context_file = Path(kit_dir) / "startup" / SITE_CONTEXT_FILE
    try:
        context_bytes = context_file.read_bytes()
    except OSError as error:
        raise HEConfigError(
            f"cannot read the secret CKKS context {context_file}: {error}. Pass the folder of a site kit "
            "provisioned with --he."
        ) from None
    return decrypt_model(model, load_context(context_bytes, get_preset(model.preset)))


def _write_params(params: Mapping[str, np.ndarray], output: Path) -> None:
    if output.suffix == ".pt":
        import torch

        torch.save({key: torch.from_numpy(value) for key, value in params.items()}, output)
    elif output.suffix == ".npz":
        np.savez(output, allow_pickle=False, **params)
    else:
        raise InvalidPrivacyInput(f"invalid output {output}: use a .npz or .pt file name")


def main(argv: Sequence[str] | None = None) -> int:
    """Decrypt an HE job's encrypted global model with a site kit; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m app_custom.core.privacy.he_model",
        description="Decrypt the encrypted global model an HE job saved at the server, with a site kit.",
    )
    parser.add_argument("model", type=Path, help=f"the server's {ENCRYPTED_MODEL_FILE}")
    parser.add_argument("--kit", type=Path, required=True, help="site kit folder that contains startup/")
    parser.add_argument("--output", type=Path, required=True, help="file to write: .npz (numpy) or .pt (torch)")
    args = parser.parse_args(argv)
    try:
        params = decrypt_model_file(args.model, args.kit)
        _write_params(params, args.output)
    except PrivacyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {len(params)} layers to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
