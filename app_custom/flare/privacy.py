"""Server workflow for private jobs: DP-SGD reporting, client-level DP and CKKS secure aggregation.

``PrivateFedAvg`` is ``ConsortiaFedAvg`` with three options, each validated when the job is built:

- ``site_dp_max_epsilon``: the sites train with DP-SGD. Every training result must report ``dp_epsilon`` at or
  below this bound, and the workflow emits a ``privacy.spent`` event per site per round (mechanism "dp-sgd").
- ``client_dp``: DP-FedAvg (``dp_aggregator``) replaces FedAvg. The workflow clips each accepted site update,
  adds Gaussian noise to the aggregate and emits one ``privacy.spent`` event per round (mechanism "dp-fedavg",
  no site) with the RDP-accounted epsilon of the job so far.
- ``secure_aggregation``: the sites encrypt their params (``he_filters``) and the server adds ciphertexts
  (``he_aggregator``) with the public context from its kit. The server never loads a secret key. After each
  round it saves the encrypted aggregate to ``encrypted_global_model.json`` in its app folder of the job, which a
  site kit decrypts (``app_custom.core.privacy.he_model``).

``client_dp`` and ``secure_aggregation`` exclude each other, because the noise needs plaintext updates.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from nvflare.apis.fl_constant import FLContextKey
from nvflare.app_common.abstract.fl_model import FLModel
from pydantic import Field, FiniteFloat

from app_custom.core.errors import ContributionRejected
from app_custom.core.privacy._validation import PrivacyConfigModel
from app_custom.core.privacy.client_dp import ClientDPConfig
from app_custom.core.privacy.errors import HEConfigError, InvalidPrivacySetting, PrivacyError
from app_custom.core.privacy.he import get_preset
from app_custom.core.privacy.he_model import ENCRYPTED_MODEL_FILE, EncryptedModel, save_encrypted_model
from app_custom.core.round_metrics import clean_metrics
from app_custom.flare.controller import ConsortiaFedAvg
from app_custom.flare.dp_aggregator import ClientDPRoundAggregator
from app_custom.flare.he_aggregator import HE_META_SHAPES, HE_META_TOTAL_WEIGHT, EncryptedRoundAggregator, shapes_of
from app_custom.flare.he_context import SERVER_CONTEXT_FILE, load_kit_context

__all__ = ["PrivateFedAvg", "SecureAggregationConfig", "SiteDPPolicy"]

DP_SGD = "dp-sgd"
DP_FEDAVG = "dp-fedavg"


class SecureAggregationConfig(PrivacyConfigModel):
    """Settings of CKKS secure aggregation on the server.

    Attributes:
        preset: Name of the CKKS preset the kit's contexts must match; FLARE's HEBuilder writes "ckks_8192".
        context_file: The public context's file name in the server kit's ``startup/`` folder.
    """

    preset: str = "ckks_8192"
    context_file: str = SERVER_CONTEXT_FILE

    _error_type: ClassVar[type[PrivacyError]] = HEConfigError
    _hints: ClassVar[dict[str, str]] = {"preset": "Use ckks_8192, the preset of 'consortia provision --he'."}


class SiteDPPolicy(PrivacyConfigModel):
    """Server-side requirement on sites that train with DP-SGD.

    Attributes:
        max_epsilon: Largest ``dp_epsilon`` a training result may report, > 0.
    """

    max_epsilon: FiniteFloat = Field(gt=0)

    _hints: ClassVar[dict[str, str]] = {"max_epsilon": "Set it to the sites' --dp-epsilon, for example 3.0."}


def _validated(model: type[PrivacyConfigModel], name: str, value: object) -> Any:
    if not isinstance(value, dict):
        raise model._error_type(
            f"invalid {name}={value!r}: expected an object with the fields of {model.__name__}, or null to turn it off"
        )
    return model(**value)


def _check_combinations(kwargs: dict[str, Any], client_dp: bool, secure: bool) -> None:
    if client_dp and secure:
        raise InvalidPrivacySetting(
            "client_dp and secure_aggregation cannot be combined: the server adds DP-FedAvg noise to plaintext "
            "updates. Use one of them, or DP-SGD at the sites (site_dp) with secure_aggregation."
        )
    aggregation = kwargs.get("aggregation") or {}
    if (client_dp or secure) and aggregation:
        raise InvalidPrivacySetting(
            f"aggregation={aggregation!r} cannot be used with client_dp or secure_aggregation, which replace the "
            "round's aggregation. Remove the aggregation option."
        )
    if client_dp and kwargs.get("site_selection"):
        raise InvalidPrivacySetting(
            "site_selection cannot be combined with client_dp: choosing sites by their data changes the sample "
            "rate the noise is accounted with. Remove site_selection."
        )
    if secure and kwargs.get("max_update_norm") is not None:
        raise InvalidPrivacySetting(
            "max_update_norm cannot be checked on encrypted params. Remove it, or clip at the sites with DP-SGD."
        )


class PrivateFedAvg(ConsortiaFedAvg):
    """``ConsortiaFedAvg`` with DP-SGD reporting, client-level DP or CKKS secure aggregation.

    Privacy: see the module docstring for what each option protects. Every option is validated here, so a job
    with a NaN, zero, negative or infinite setting, or an unsupported combination, fails when FLARE builds it,
    before any site trains. At run time, a missing or secret server context stops the job before round 0.

    Args:
        client_dp: ``ClientDPConfig`` fields (clip_norm, noise_multiplier, sample_rate, target_delta), or None.
        secure_aggregation: ``SecureAggregationConfig`` fields (preset, context_file), or None.
        site_dp: ``SiteDPPolicy`` fields (max_epsilon), or None when the sites do not train with DP-SGD.
        **kwargs: Arguments of ``ConsortiaFedAvg``.

    Raises:
        InvalidPrivacySetting: A DP setting or combination is invalid.
        HEConfigError: The secure aggregation settings are invalid.
    """

    def __init__(
        self,
        client_dp: dict[str, Any] | None = None,
        secure_aggregation: dict[str, Any] | None = None,
        site_dp: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        _check_combinations(kwargs, client_dp is not None, secure_aggregation is not None)
        super().__init__(**kwargs)
        self.client_dp: ClientDPConfig | None = None
        self.secure_aggregation: SecureAggregationConfig | None = None
        self.site_dp: SiteDPPolicy | None = None
        if client_dp is not None:
            self.client_dp = _validated(ClientDPConfig, "client_dp", client_dp)
        if secure_aggregation is not None:
            self.secure_aggregation = _validated(SecureAggregationConfig, "secure_aggregation", secure_aggregation)
            get_preset(self.secure_aggregation.preset)
        if site_dp is not None:
            self.site_dp = _validated(SiteDPPolicy, "site_dp", site_dp)
        if self.client_dp is not None:
            self.round_aggregator = ClientDPRoundAggregator(self.client_dp)  # type: ignore[assignment]
        self._he: EncryptedRoundAggregator | None = None

    # ------------------------------------------------------------------ workflow

    def run(self) -> None:
        if self.secure_aggregation is not None:
            try:
                context = load_kit_context(
                    self.secure_aggregation.context_file, self.secure_aggregation.preset, secret=False
                )
            except PrivacyError as error:
                self.system_panic(f"secure aggregation cannot start: {error}", self.fl_ctx)
                return
            self._he = EncryptedRoundAggregator(context)
            self.round_aggregator = self._he  # type: ignore[assignment]
            self.info(f"secure aggregation with the public CKKS context {self.secure_aggregation.context_file}")
        super().run()

    def _run_round(self, model: FLModel, targets: list[str]) -> FLModel | None:
        if isinstance(self.round_aggregator, ClientDPRoundAggregator):
            try:
                self.round_aggregator.start_round(model.params or {}, len(targets))
            except PrivacyError as error:
                self.system_panic(f"round {self._round}: DP-FedAvg cannot start: {error}", self.fl_ctx)
                return None
        new_model = super()._run_round(model, targets)
        if new_model is None:
            return None
        if self._he is not None:
            new_model.meta = self._he.result_meta()
        if isinstance(self.round_aggregator, ClientDPRoundAggregator):
            self._emit_server_privacy_spent(self.round_aggregator)
        return new_model

    def save_model(self, model: FLModel) -> None:
        if self._he is None:
            super().save_model(model)
            return
        # FLARE's PyTorch persistor cannot store ciphertexts, so the encrypted aggregate goes to a file of its own
        # in the job's server app folder, next to where the persistor would save a plaintext model.
        assert self.secure_aggregation is not None
        app_root = self.fl_ctx.get_prop(FLContextKey.APP_ROOT)
        if not app_root:
            self.warning(f"round {self._round}: no app folder in the FL context; the encrypted model is not saved")
            return
        meta = model.meta or {}
        encrypted = EncryptedModel(
            preset=self.secure_aggregation.preset,
            round=self._round,
            total_weight=float(meta[HE_META_TOTAL_WEIGHT]),
            shapes={key: tuple(shape) for key, shape in meta[HE_META_SHAPES].items()},
            ciphertexts={key: list(chunks) for key, chunks in (model.params or {}).items()},
        )
        path = Path(app_root) / ENCRYPTED_MODEL_FILE
        try:
            save_encrypted_model(path, encrypted)
        except OSError as error:
            self.warning(f"round {self._round}: cannot save the encrypted global model to {path}: {error}")
            return
        self.info(f"round {self._round}: saved the encrypted global model to {path}")

    # ------------------------------------------------------------------ results

    def _start_collecting(self, model: FLModel) -> None:
        super()._start_collecting(model)
        if self._he is not None and not (model.meta or {}).get(HE_META_SHAPES):
            # Round 0 starts from the persistor's plaintext model: its shapes are the ones sites must encrypt.
            self._he.start_round(shapes_of({key: np.asarray(value) for key, value in (model.params or {}).items()}))

    def _on_result(self, result: FLModel) -> None:
        super()._on_result(result)
        if not 0 <= self._round < self.num_rounds:
            return
        metrics = result.metrics or {}
        if "dp_epsilon" in metrics and not (result.meta or {}).get("refused"):
            self._emit_site_privacy_spent((result.meta or {}).get("client_name", "unknown"), metrics)

    def _accept(self, site: str, result: FLModel) -> dict[str, Any] | None:
        meta = result.meta or {}
        if meta.get("refused") or not result.params:
            return super()._accept(site, result)
        if self.site_dp is not None and not self._site_dp_ok(site, result.metrics or {}):
            return None
        if self._he is None:
            return super()._accept(site, result)
        return self._accept_encrypted(site, result)

    def _site_dp_ok(self, site: str, metrics: dict[str, Any]) -> bool:
        assert self.site_dp is not None
        epsilon = metrics.get("dp_epsilon")
        if isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon <= self.site_dp.max_epsilon:
            return True
        self._reject(
            site,
            "dp_epsilon_exceeded",
            f"the site reported dp_epsilon={epsilon!r}, but this job requires DP-SGD with epsilon <= "
            f"{self.site_dp.max_epsilon}; run the site with --dp-epsilon at most that value",
        )
        return False

    def _accept_encrypted(self, site: str, result: FLModel) -> dict[str, Any] | None:
        assert self._he is not None
        meta, metrics = result.meta or {}, result.metrics or {}
        try:
            self._he.add(site, result.params, meta.get("num_examples"), meta.get(HE_META_SHAPES))
        except ContributionRejected as error:
            self._reject(site, error.reason_code, str(error))
            return None
        upload_bytes = sum(len(chunk) for chunks in result.params.values() for chunk in chunks)
        self._bytes_uploaded += upload_bytes
        self.info(f"round {self._round}: added the encrypted model of {site} ({meta.get('num_examples')} examples)")
        return {
            "num_examples": int(meta["num_examples"]),
            "upload_bytes": int(upload_bytes),
            "metrics": clean_metrics(metrics),
        }

    # ------------------------------------------------------------------ privacy events

    def _emit_site_privacy_spent(self, site: str, metrics: dict[str, Any]) -> None:
        values = {key: metrics.get(f"dp_{key}") for key in ("epsilon", "delta", "noise_multiplier")}
        if not all(isinstance(value, (int, float)) and math.isfinite(value) for value in values.values()):
            self.warning(f"round {self._round}: {site} reported invalid DP metrics {values}; no privacy.spent event")
            return
        payload: dict[str, Any] = {key: float(value) for key, value in values.items()}  # type: ignore[arg-type]
        payload["mechanism"] = DP_SGD
        for key in ("max_grad_norm", "sample_rate"):
            if isinstance(metrics.get(f"dp_{key}"), (int, float)):
                payload[key] = float(metrics[f"dp_{key}"])
        self._emit("privacy.spent", site=site, payload=payload)

    def _emit_server_privacy_spent(self, aggregator: ClientDPRoundAggregator) -> None:
        config = aggregator.config
        epsilon = aggregator.epsilon()
        self.info(f"round {self._round}: DP-FedAvg epsilon so far {epsilon:.4g} at delta={config.target_delta:g}")
        if not math.isfinite(epsilon):
            self.warning(f"round {self._round}: DP-FedAvg epsilon is not finite; no privacy.spent event")
            return
        payload = {
            "epsilon": float(epsilon),
            "delta": float(config.target_delta),
            "noise_multiplier": float(config.noise_multiplier),
            "clip_norm": float(config.clip_norm),
            "sample_rate": float(config.sample_rate),
            "rounds": aggregator.rounds_done,
            "mechanism": DP_FEDAVG,
        }
        self._emit("privacy.spent", payload=payload)
