"""Server workflow: federated rounds with contribution checks, k-of-n participation and audited events.

Each round the controller sends the global model to the sites, checks each returned model before it touches the
aggregate (``app_custom.core.validation``), folds accepted models into the configured aggregation
(``app_custom.core.round_aggregation``: streaming weighted FedAvg by default, ``num_examples`` as aggregation
weight), and reports every step as a Consortia event. Unlike FLARE's stock ``FedAvg``, a round ends after
``round_timeout`` seconds even if a site died, and the job fails with a clear message when fewer than ``min_sites``
valid contributions arrive: a global model is never built from nothing or from NaN.

Options cover the platform's algorithms: FedProx is a site-side setting of the training script; Fed-Focal Loss is the
site's loss plus ``aggregation.focal_beta``/``focal_top_fraction`` here; CatFedAvg (``site_selection``) first asks
every site for its class histogram, then requests updates only from the sites chosen by category coverage.

Global metrics: at round r every site evaluates the global model it receives (the model after r rounds of
aggregation) on its own held-out split before training, and the controller averages those metrics weighted by
held-out size. A closing evaluation task reports the final model as round ``num_rounds``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any

import numpy as np
from nvflare.apis.fl_constant import ReturnCode
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.workflows.model_controller import ModelController

from app_custom.core.errors import ContributionRejected, CoreError
from app_custom.core.round_aggregation import AggregationConfig, RoundAggregator
from app_custom.core.round_metrics import clean_metrics, weighted_site_mean
from app_custom.core.selection import select_by_category_coverage
from app_custom.core.validation import check_contribution, check_num_examples
from app_custom.flare.event_forwarder import spool_event
from app_custom.flare.events import make_envelope
from app_custom.flare.revocation_guard import ALL_SITES, revoked_site_names

METADATA_ROUND = -1
# Reason codes a site may send in meta["refused"]; the admin service's event schema accepts the same pattern.
REASON_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")
# Refusal codes after which the site gets no further tasks in the job, because the cause does not change between
# rounds. They cover the site's policy, its data (``site_data_invalid`` from the training script) and its privacy
# budget or ledger (``privacy_*`` from ``app_custom.flare.dp_site``). Any other code is treated as transient.
PERMANENT_REFUSALS = frozenset(
    {"site_policy", "site_data_invalid", "privacy_budget_exhausted", "privacy_budget_invalid", "privacy_ledger_invalid"}
)


class ConsortiaFedAvg(ModelController):
    """Federated averaging (McMahan et al. 2017) with contribution checks and bounded rounds.

    Args:
        num_rounds: number of training rounds.
        min_sites: valid contributions needed per round; ``None`` means every site that is connected at start
            (or every selected site with ``site_selection``), so any refusal stops the job. A site that refuses
            with a code in ``PERMANENT_REFUSALS`` gets no further tasks in the job; with an explicit ``min_sites``
            the job goes on without it while enough sites remain.
        round_timeout: seconds a round waits for sites before it closes with what arrived (0 waits forever).
        wait_time_after_min_received: seconds to keep waiting for late sites once ``min_sites`` have responded.
        max_update_norm: reject a contribution whose L2 distance to the global model exceeds this (None: no bound).
        aggregation: ``AggregationConfig`` fields (method, trim_fraction, focal_beta, focal_top_fraction,
            server_optimizer, server_learning_rate).
        site_selection: CatFedAvg selection, ``{"variant": "full_coverage"}`` or ``{"variant": "budget",
            "budget": k}``, optionally with ``"candidates_per_round": m`` to draw m candidate sites at random each
            round before the coverage step (class histograms do not change between rounds, so without it the same
            sites are chosen every round); None trains every site.
        final_evaluation: evaluate the final global model at every site after the last round.
        persistor_id: component id of the model persistor.
        task_check_period: seconds between checks of outstanding tasks, by FLARE's task monitor and by this
            workflow. A round closes up to two periods after its last result arrives.
    """

    def __init__(
        self,
        num_rounds: int = 5,
        min_sites: int | None = None,
        round_timeout: int = 600,
        wait_time_after_min_received: int = 10,
        max_update_norm: float | None = None,
        aggregation: dict[str, Any] | None = None,
        site_selection: dict[str, Any] | None = None,
        final_evaluation: bool = True,
        persistor_id: str = AppConstants.DEFAULT_PERSISTOR_ID,
        task_check_period: float = 0.05,
    ) -> None:
        super().__init__(persistor_id=persistor_id, task_check_period=task_check_period, ignore_result_error=True)
        if num_rounds < 1:
            raise ValueError(f"invalid num_rounds {num_rounds}: use 1 or more")
        if min_sites is not None and min_sites < 1:
            raise ValueError(f"invalid min_sites {min_sites}: use 1 or more, or null for all sites")
        if round_timeout < 0:
            raise ValueError(f"invalid round_timeout {round_timeout}: use seconds >= 0 (0 waits forever)")
        if site_selection is not None:
            if site_selection.get("variant") not in ("full_coverage", "budget"):
                raise ValueError(f"invalid site_selection {site_selection!r}: use variant 'full_coverage' or 'budget'")
            candidates = site_selection.get("candidates_per_round")
            if candidates is not None and (not isinstance(candidates, int) or candidates < 1):
                raise ValueError(f"invalid candidates_per_round {candidates!r}: use a whole number of sites >= 1")
        self.num_rounds = num_rounds
        self.min_sites = min_sites
        self.round_timeout = round_timeout
        self.wait_time_after_min_received = wait_time_after_min_received
        self.max_update_norm = max_update_norm
        self.round_aggregator = RoundAggregator(AggregationConfig(**(aggregation or {})))
        self.site_selection = site_selection
        self.final_evaluation = final_evaluation
        self._lock = threading.Lock()
        self._global_params: dict[str, np.ndarray] = {}
        self._site_metrics: dict[str, dict[str, Any]] = {}
        self._class_counts: dict[str, list[int]] = {}
        self._responded: set[str] = set()
        self._excluded: dict[str, str] = {}
        self._rejected = 0
        self._bytes_uploaded = 0
        self._round = 0
        self._warned_no_spool = False
        self._broadcast_started = time.monotonic()

    # ------------------------------------------------------------------ workflow

    def run(self) -> None:
        self._apply_task_check_period()
        model = self.load_model()
        sites = self._connected_sites()
        if self.min_sites is not None and self.min_sites > len(sites):
            self._stop_job(
                f"min_sites={self.min_sites} but only {len(sites)} sites are connected ({sites}): lower min_sites "
                "or wait until the missing sites register",
                accepted=0,
            )
            return
        self.info(f"training {sites} for {self.num_rounds} rounds")
        if self.site_selection:
            self._collect_class_counts(model, sites)
        for self._round in range(self.num_rounds):
            sites = self._without_excluded(sites)
            targets = self._select_sites(sites)
            model = self._run_round(model, targets)
            if model is None:
                return
            self.save_model(model)
        if self.final_evaluation:
            self._evaluate_final(model, [site for site in sites if site not in self._excluded])
        self.info(f"training finished after round {self.num_rounds - 1}")

    def _run_round(self, model: FLModel, targets: list[str]) -> FLModel | None:
        current = self._round
        required = self._required_sites(targets)
        self.info(f"round {current} started with sites {targets}")
        excluded = {"excluded_sites": dict(self._excluded)} if self._excluded else {}
        self._emit("round.started", payload={"num_rounds": self.num_rounds, "sites": targets, **excluded})
        self._start_collecting(model)
        model.current_round = current
        model.total_rounds = self.num_rounds
        self._broadcast("train", model, targets, required)
        if self.abort_signal.triggered:
            return None
        self._report_missing(targets)
        accepted = self.round_aggregator.count
        if accepted < required:
            self._stop_job(
                f"round {current} received {accepted} valid contributions but min_sites={required}: stopping the "
                "job instead of building a global model from too few sites; see the rejected contributions",
                accepted=accepted,
            )
            return None
        try:
            params = self.round_aggregator.result(self._global_params)
        except CoreError as exc:
            self._stop_job(f"round {current} aggregation failed: {exc}", accepted=accepted)
            return None
        self._emit_round_completed(accepted)
        return FLModel(params=params, params_type=model.params_type, current_round=current, total_rounds=self.num_rounds)

    def _collect_class_counts(self, model: FLModel, sites: list[str]) -> None:
        """Ask every site for its class histogram (CatFedAvg's metadata step, no model upload)."""
        self._round = METADATA_ROUND
        self._start_collecting(model)
        self._broadcast("validate", model, sites, len(sites))
        self._bytes_uploaded = sum(len(json.dumps(counts)) for counts in self._class_counts.values())
        self.info(f"class histograms from {sorted(self._class_counts)} ({self._bytes_uploaded} bytes)")

    def _select_sites(self, sites: list[str]) -> list[str]:
        if not self.site_selection:
            return sites
        counts = {site: self._class_counts[site] for site in sites if site in self._class_counts}
        if not counts:
            raise RuntimeError("CatFedAvg selection needs class histograms, but no site reported one")
        candidates = self.site_selection.get("candidates_per_round")
        if candidates is not None and candidates < len(counts):
            drawn = np.random.default_rng(self._round).choice(sorted(counts), size=int(candidates), replace=False)
            counts = {str(site): counts[str(site)] for site in drawn}
        selected = select_by_category_coverage(
            counts,
            variant=self.site_selection["variant"],
            budget=self.site_selection.get("budget"),
            seed=self._round,
        )
        self.info(f"round {self._round}: CatFedAvg selected {selected} of {sites}")
        return sorted(selected)

    def _evaluate_final(self, model: FLModel, sites: list[str]) -> None:
        self._round = self.num_rounds
        self._start_collecting(model)
        model.current_round = self.num_rounds
        self._broadcast("validate", model, sites, self._required_sites(sites))
        self._emit_round_completed(len(self._site_metrics))

    def _broadcast(self, task_name: str, model: FLModel, sites: list[str], required: int) -> None:
        self._broadcast_started = time.monotonic()
        self.broadcast_model(
            task_name=task_name,
            data=model,
            targets=sites,
            min_responses=min(required, len(sites)),
            timeout=self.round_timeout,
            wait_time_after_min_received=self.wait_time_after_min_received,
            blocking=False,
            callback=self._on_result,
        )
        while self.get_num_standing_tasks():
            if self.abort_signal.triggered:
                self.info("abort requested: stopping")
                return
            time.sleep(self._task_check_period)

    # ------------------------------------------------------------------ results

    def _start_collecting(self, model: FLModel) -> None:
        with self._lock:
            self.round_aggregator.reset()
            self._global_params = {k: np.asarray(v) for k, v in (model.params or {}).items()}
            self._site_metrics = {}
            self._responded = set()
            self._rejected = 0
            self._bytes_uploaded = 0

    def _on_result(self, result: FLModel) -> None:
        meta = result.meta or {}
        site = meta.get("client_name", "unknown")
        with self._lock:
            self._responded.add(site)
            if result.metrics:
                self._site_metrics[site] = dict(result.metrics)
            if self._round == METADATA_ROUND and meta.get("class_counts") is not None:
                self._class_counts[site] = [int(c) for c in meta["class_counts"]]
            if not 0 <= self._round < self.num_rounds:
                return
            outcome = self._accept(site, result)
        if outcome is not None:
            self._emit("contribution.accepted", site=site, payload=outcome)

    def _accept(self, site: str, result: FLModel) -> dict[str, Any] | None:
        """Check and aggregate one training result; return the accepted event payload, or None when rejected."""
        refused = (result.meta or {}).get("refused")
        if refused:
            # The site declined to train, for example because its privacy budget is spent; keep its reason code.
            code = str(refused) if REASON_CODE.fullmatch(str(refused)) else "refused"
            reason = str((result.meta or {}).get("reason") or "the site refused to train")[:4000]
            permanent = code in PERMANENT_REFUSALS
            if permanent:
                self._excluded[site] = code
            self._reject(site, code, reason, excluded=permanent)
            return None
        if not result.params:
            self._reject(site, "missing_params", "the site's result carries no model parameters")
            return None
        metrics = result.metrics or {}
        num_examples = (result.meta or {}).get("num_examples")
        try:
            params = {k: np.asarray(v) for k, v in result.params.items()}
            check_contribution(
                params,
                global_params=self._global_params or None,
                num_examples=num_examples,
                max_update_norm=self.max_update_norm,
            )
            weight = check_num_examples(num_examples)
            self.round_aggregator.add(site, params, weight, metrics.get("local_train_loss"))
        except ContributionRejected as exc:
            self._reject(site, exc.reason_code, str(exc))
            return None
        except CoreError as exc:
            self._reject(site, "invalid", str(exc))
            return None
        upload_bytes = int(sum(array.nbytes for array in params.values()))
        self._bytes_uploaded += upload_bytes
        self.info(f"round {self._round}: accepted model from {site} ({num_examples} examples)")
        return {"num_examples": int(weight), "upload_bytes": upload_bytes, "metrics": clean_metrics(metrics)}

    def _accept_train_result(self, client_name: str, result: Any, fl_ctx: Any, is_unknown_task: bool = False) -> bool:
        # NOTE: this overrides a private hook of FLARE 2.9's BaseModelController. It is the only place where a
        # site's error return code is visible, because results with an error code never reach the callback.
        accepted = super()._accept_train_result(client_name, result, fl_ctx, is_unknown_task)
        return_code = result.get_return_code()
        if not accepted and not is_unknown_task and return_code not in (None, ReturnCode.OK):
            with self._lock:
                self._responded.add(client_name)
            if 0 <= self._round < self.num_rounds:
                self._reject(client_name, "site_error", f"the site failed the task with return code {return_code}")
        return accepted

    def _reject(self, site: str, reason_code: str, reason: str, *, excluded: bool = False) -> None:
        self._rejected += 1
        self.warning(f"round {self._round}: rejected contribution of {site}: {reason}")
        payload: dict[str, Any] = {"reason_code": reason_code, "reason": reason}
        if excluded:
            # The admin service stores unknown payload fields as sent, so this needs no schema change.
            payload["excluded_from_job"] = True
            self.warning(f"round {self._round}: {site} refused with {reason_code}: it gets no further tasks")
        self._emit("contribution.rejected", site=site, payload=payload)

    def _without_excluded(self, sites: list[str]) -> list[str]:
        """Return ``sites`` without those that refused permanently, logging when that drops any."""
        remaining = [site for site in sites if site not in self._excluded]
        if len(remaining) < len(sites):
            dropped = {site: self._excluded[site] for site in sites if site in self._excluded}
            self.info(f"round {self._round}: sending no tasks to {dropped} (permanent refusals)")
        return remaining

    def _report_missing(self, sites: list[str]) -> None:
        elapsed = time.monotonic() - self._broadcast_started
        if self.round_timeout and elapsed >= self.round_timeout - 1:
            reason = f"no result within round_timeout={self.round_timeout} s"
        else:
            reason = (
                f"no result when the round closed {elapsed:.0f} s after it started: min_sites were reached and "
                f"wait_time_after_min_received={self.wait_time_after_min_received} s passed"
            )
        for site in sites:
            if site not in self._responded:
                self._reject(site, "no_response", reason)

    def _stop_job(self, message: str, *, accepted: int) -> None:
        """Record why the job stops in the round's event, then end the job through FLARE."""
        self._emit_round_completed(accepted, failure_reason=message)
        self.system_panic(message, self.fl_ctx)

    def _emit_round_completed(self, accepted: int, failure_reason: str | None = None) -> None:
        global_metrics = weighted_site_mean(self._site_metrics, "global")
        self.info(f"round {self._round}: global metrics {global_metrics}")
        extra = {"failure_reason": failure_reason} if failure_reason else {}
        self._emit(
            "round.completed",
            payload={
                **extra,
                "num_accepted": accepted,
                "num_rejected": self._rejected,
                "bytes_uploaded": self._bytes_uploaded,
                "global_metrics": global_metrics,
                "site_metrics": {site: clean_metrics(m) for site, m in self._site_metrics.items()},
                "evaluation_only": self._round >= self.num_rounds,
            },
        )

    # ------------------------------------------------------------------ helpers

    def _apply_task_check_period(self) -> None:
        # NOTE: FLARE 2.9's Controller.set_communicator copies task_check_period to the communicator's public
        # attribute, but WFCommServer's task monitor sleeps for its private _task_check_period (0.2 s by default),
        # which then adds up to 0.2 s to every round. Setting the private one makes the configured period apply.
        communicator = getattr(self, "communicator", None)
        if communicator is not None and hasattr(communicator, "_task_check_period"):
            communicator._task_check_period = self._task_check_period

    def _connected_sites(self) -> list[str]:
        # A revoked site that is still connected (revoked while running) takes no part; an invalid list excludes all.
        revoked = revoked_site_names(self.engine.get_workspace().get_root_dir())
        if ALL_SITES in revoked:
            self.error("the server's revocation list does not verify: training no site")
        connected = {client.name for client in self.engine.get_clients()}
        return sorted(site for site in connected if site not in revoked and ALL_SITES not in revoked)

    def _required_sites(self, sites: list[str]) -> int:
        if self.min_sites is None:
            return len(sites)
        return min(self.min_sites, len(sites))

    def _emit(self, event_type: str, *, site: str | None = None, payload: dict[str, Any] | None = None) -> None:
        with self.engine.new_context() as fl_ctx:
            job_id = fl_ctx.get_job_id()
        round_number = self._round if self._round >= 0 else None
        envelope = make_envelope(event_type, job_id=job_id, site=site, round_number=round_number, payload=payload)
        server_root = self.engine.get_workspace().get_root_dir()
        try:
            spooled = spool_event(server_root, envelope)
        except OSError as exc:
            self.error(f"failed to spool {event_type} event for job {job_id}: {exc}")
            return
        if not spooled and not self._warned_no_spool:
            self._warned_no_spool = True
            self.warning(f"no event forwarder in {server_root}/local/resources.json: events are not reported")
