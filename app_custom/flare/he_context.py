"""Load the CKKS context a provisioned kit carries, checked against its signature and a Consortia preset.

``consortia provision --he`` runs FLARE 2.9's ``HEBuilder``, which writes one TenSEAL CKKS context per kit into
``startup/`` and signs it (``startup/signature.json``):

- ``server_context.tenseal`` in the server kit: no secret key and no public key (the builder uses symmetric
  encryption), only what adding ciphertexts needs;
- ``client_context.tenseal`` in every site kit: the one secret key all sites share.

FLARE's ``SecurityContentService`` reads the file from the kit's ``startup/`` folder and verifies its signature
against the root CA. Anything but a valid signature raises.
"""

from __future__ import annotations

from nvflare.fuel.sec.security_content_service import LoadResult, SecurityContentService

from app_custom.core.privacy.errors import HEConfigError
from app_custom.core.privacy.he import HEContext, get_preset, load_context

__all__ = ["CLIENT_CONTEXT_FILE", "SERVER_CONTEXT_FILE", "load_kit_context"]

SERVER_CONTEXT_FILE = "server_context.tenseal"
CLIENT_CONTEXT_FILE = "client_context.tenseal"


def load_kit_context(file_name: str, preset_name: str, *, secret: bool) -> HEContext:
    """Load a signed CKKS context from this process's kit and check it against a preset and its key role.

    Privacy: the server must never hold the secret key and a site cannot decrypt without it, so a context whose
    key role differs from ``secret`` raises. An unsigned, tampered or missing file raises too, so a job never
    encrypts under a context an attacker substituted.

    Args:
        file_name: File name in the kit's ``startup/`` folder.
        preset_name: Name of the preset the context must match (for example "ckks_8192").
        secret: True at a site (the context must contain the secret key), False at the server (it must not).

    Returns:
        The checked context.

    Raises:
        HEConfigError: The file is missing, unsigned or invalid, does not match the preset, or has the wrong
            key role.
    """
    preset = get_preset(preset_name)
    data, result = SecurityContentService.load_content(file_name)
    if result != LoadResult.OK or not data:
        raise HEConfigError(
            f"cannot load the CKKS context {file_name} from this kit's startup folder: {result}. Provision the "
            "federation with 'consortia provision --he' and start every participant from its new kit."
        )
    context = load_context(data, preset)
    if context.is_private != secret:
        holder = "site" if secret else "server"
        state = "has no secret key" if secret else "contains the secret key"
        raise HEConfigError(
            f"the CKKS context {file_name} {state}, but the {holder} needs a context that "
            f"{'contains' if secret else 'does not contain'} it. Provision the kits again with --he."
        )
    return context
