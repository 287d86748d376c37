"""Site filters of CKKS secure aggregation: encrypt the params a site sends and decrypt the aggregate it receives.

They run in the site's job process around the training script (``task_result_filters`` and ``task_data_filters``
of the job's client config), so the script itself stays plain PyTorch and DP-SGD and HE combine without extra
code. Both load the shared secret context ``startup/client_context.tenseal`` from the site's signed kit on first
use.

- ``EncryptParams`` (result filter): multiplies the params by the result's ``num_examples`` and encrypts them
  (``app_custom.core.privacy.he.encrypt_params``), by default packed into as few ciphertexts as they fill. Metrics-only
  results (evaluations, refused rounds) pass unchanged. Any other data kind raises, because it would leave the
  site unencrypted.
- ``DecryptAggregate`` (data filter): decrypts an encrypted aggregate with the total weight and shapes in its meta,
  giving the FedAvg of the sites present. The plaintext initial model of round 0 passes unchanged.

A filter that raises makes FLARE 2.9 reply with ``TASK_RESULT_FILTER_ERROR`` (or ``TASK_DATA_FILTER_ERROR``) and
no data, so a failure never sends params in the clear.
"""

from __future__ import annotations

import numpy as np
from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from app_custom.core.privacy.errors import HEConfigError, InvalidPrivacyInput
from app_custom.core.privacy.he import HEContext, decrypt_params, encrypt_params, get_preset
from app_custom.flare.he_aggregator import HE_META_ENCRYPTED, HE_META_SHAPES, HE_META_TOTAL_WEIGHT, shapes_of
from app_custom.flare.he_context import CLIENT_CONTEXT_FILE, load_kit_context

__all__ = ["DecryptAggregate", "EncryptParams"]


class _SiteContextFilter(Filter):
    def __init__(self, preset: str = "ckks_8192", context_file: str = CLIENT_CONTEXT_FILE) -> None:
        super().__init__()
        get_preset(preset)  # an unknown preset raises when the job is deployed, before any round
        self.preset = preset
        self.context_file = context_file
        self._context: HEContext | None = None

    def _site_context(self) -> HEContext:
        if self._context is None:
            self._context = load_kit_context(self.context_file, self.preset, secret=True)
        return self._context


class EncryptParams(_SiteContextFilter):
    """Encrypts the params of a site's training result, pre-multiplied by its ``num_examples``.

    By default all layers are packed into one vector, so the upload has ceil(params / slots) ciphertexts; with
    ``pack=False`` each layer starts its own ciphertext.

    Privacy: protects the site's params against the server and the network; only holders of the shared secret
    key (the sites) can decrypt. A missing key, a non-numeric weight, non-finite params or a data kind other
    than full weights raises, so FLARE sends an error reply with no data.

    Args:
        preset: Name of the CKKS preset the kit's context must match.
        context_file: The secret context's file name in the site kit's ``startup/`` folder.
        pack: Pack all layers into one vector before encrypting.
    """

    def __init__(self, preset: str = "ckks_8192", context_file: str = CLIENT_CONTEXT_FILE, pack: bool = True) -> None:
        super().__init__(preset, context_file)
        if not isinstance(pack, bool):
            raise HEConfigError(f"invalid pack={pack!r}: set it to true or false")
        self.pack = pack

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        """Encrypt the params of ``shareable`` in place; metrics-only results pass unchanged."""
        dxo = from_shareable(shareable)
        if dxo.data_kind == DataKind.METRICS:
            return shareable
        if dxo.data_kind != DataKind.WEIGHTS:
            raise InvalidPrivacyInput(
                f"secure aggregation encrypts full weights only, but the result has data kind {dxo.data_kind!r}; "
                "send full params from the training script"
            )
        params = {key: np.asarray(value) for key, value in (dxo.data or {}).items()}
        weight = dxo.get_meta_prop("num_examples")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise InvalidPrivacyInput(f"invalid num_examples={weight!r} in the result meta: the aggregation weight")
        dxo.data = encrypt_params(params, self._site_context(), float(weight), pack=self.pack)
        dxo.set_meta_prop(HE_META_ENCRYPTED, True)
        dxo.set_meta_prop(HE_META_SHAPES, {key: list(shape) for key, shape in shapes_of(params).items()})
        self.log_info(fl_ctx, f"encrypted {len(params)} layers for secure aggregation")
        return dxo.update_shareable(shareable)


class DecryptAggregate(_SiteContextFilter):
    """Decrypts the encrypted aggregate the server sends and divides it by the present sites' total weight.

    Privacy: runs only at sites, which hold the secret key. Meta that does not match the ciphertexts raises, so
    the training script never starts from a partly decrypted model.

    Args:
        preset: Name of the CKKS preset the kit's context must match.
        context_file: The secret context's file name in the site kit's ``startup/`` folder.
    """

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        """Decrypt the params of ``shareable`` in place; plaintext models pass unchanged."""
        dxo = from_shareable(shareable)
        if not dxo.get_meta_prop(HE_META_ENCRYPTED):
            return shareable
        shapes = dxo.get_meta_prop(HE_META_SHAPES)
        total_weight = dxo.get_meta_prop(HE_META_TOTAL_WEIGHT)
        if not isinstance(shapes, dict):
            raise InvalidPrivacyInput(f"encrypted aggregate without layer shapes in its meta (found {shapes!r})")
        decrypted = decrypt_params(
            dxo.data, self._site_context(), {key: tuple(shape) for key, shape in shapes.items()}, total_weight
        )
        dxo.data = {key: value.astype(np.float32) for key, value in decrypted.items()}
        dxo.remove_meta_props([HE_META_ENCRYPTED, HE_META_SHAPES, HE_META_TOTAL_WEIGHT])
        self.log_info(fl_ctx, f"decrypted the aggregate of {len(decrypted)} layers")
        return dxo.update_shareable(shareable)
