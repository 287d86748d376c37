"""ConsortiaFedAvg drops a site that refuses permanently from later rounds, and keeps one that refuses transiently.

The workflow runs its real ``run`` loop. Only FLARE's task transport is replaced: ``_broadcast`` calls the result
callback once per target site, the way FLARE does when every site replies.
"""

from __future__ import annotations

import numpy as np
import pytest
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel

from app_custom.flare.controller import PERMANENT_REFUSALS, ConsortiaFedAvg


class Federation:
    """Sites that reply to every task; ``refusals`` maps a site to (first round it refuses, reason code)."""

    def __init__(self, workflow: ConsortiaFedAvg, sites: list[str], refusals: dict[str, tuple[int, str]]) -> None:
        self.workflow = workflow
        self.refusals = refusals
        self.tasks: list[tuple[str, int, list[str]]] = []
        self.events: list[tuple[str, str | None, dict]] = []
        self.stops: list[str] = []
        workflow.abort_signal = Signal()
        workflow._apply_task_check_period = lambda: None  # type: ignore[method-assign]
        workflow._connected_sites = lambda: list(sites)  # type: ignore[method-assign]
        workflow.load_model = lambda: FLModel(params={"w": np.zeros(2, dtype=np.float32)})  # type: ignore[method-assign]
        workflow.save_model = lambda model: None  # type: ignore[method-assign]
        workflow._broadcast = self.broadcast  # type: ignore[method-assign]
        workflow._emit = self.emit  # type: ignore[method-assign]
        workflow._stop_job = lambda message, accepted: self.stops.append(message)  # type: ignore[method-assign]
        workflow.info = workflow.warning = lambda message: None  # type: ignore[method-assign]

    def emit(self, event_type, *, site=None, payload=None) -> None:
        self.events.append((event_type, site, payload or {}))

    def broadcast(self, task_name: str, model: FLModel, sites: list[str], required: int) -> None:
        round_number = self.workflow._round
        self.tasks.append((task_name, round_number, list(sites)))
        for site in sites:
            self.workflow._on_result(self.reply(site, task_name, round_number))

    def reply(self, site: str, task_name: str, round_number: int) -> FLModel:
        first, code = self.refusals.get(site, (None, ""))
        if first is not None and round_number >= first:
            return FLModel(metrics={}, meta={"client_name": site, "refused": code, "reason": f"{site} cannot train"})
        if task_name == "validate":
            return FLModel(metrics={"global_roc_auc": 0.7, "global_num_examples": 10}, meta={"client_name": site})
        params = {"w": np.ones(2, dtype=np.float32)}
        return FLModel(params=params, metrics={}, meta={"client_name": site, "num_examples": 10})

    def targets(self, task_name: str) -> dict[int, list[str]]:
        return {round_number: sites for name, round_number, sites in self.tasks if name == task_name}

    def payloads(self, event_type: str) -> list[tuple[str | None, dict]]:
        return [(site, payload) for name, site, payload in self.events if name == event_type]


@pytest.mark.parametrize("code", sorted(PERMANENT_REFUSALS))
def test_permanent_refusal_drops_site(code):
    workflow = ConsortiaFedAvg(num_rounds=3, min_sites=2)
    federation = Federation(workflow, ["a", "b", "c"], {"b": (0, code)})
    workflow.run()
    assert federation.stops == []
    assert federation.targets("train") == {0: ["a", "b", "c"], 1: ["a", "c"], 2: ["a", "c"]}
    assert federation.targets("validate") == {3: ["a", "c"]}
    rejected = federation.payloads("contribution.rejected")
    assert rejected == [("b", {"reason_code": code, "reason": "b cannot train", "excluded_from_job": True})]


def test_exclusion_reported_in_round_started():
    workflow = ConsortiaFedAvg(num_rounds=2, min_sites=1, final_evaluation=False)
    federation = Federation(workflow, ["a", "b"], {"b": (0, "privacy_budget_exhausted")})
    workflow.run()
    started = [payload for _, payload in federation.payloads("round.started")]
    assert "excluded_sites" not in started[0]
    assert started[1]["excluded_sites"] == {"b": "privacy_budget_exhausted"}
    assert started[1]["sites"] == ["a"]


def test_permanent_refusal_stops_all_sites_job():
    """Without min_sites the job needs every site, so a site that cannot train stops it at once."""
    workflow = ConsortiaFedAvg(num_rounds=2, final_evaluation=False)
    federation = Federation(workflow, ["a", "b", "c"], {"c": (0, "site_data_invalid")})
    workflow.run()
    assert len(federation.stops) == 1
    assert "round 0 received 2 valid contributions but min_sites=3" in federation.stops[0]
    assert list(federation.targets("train")) == [0]


def test_refusal_keeps_explicit_min_sites():
    workflow = ConsortiaFedAvg(num_rounds=2, min_sites=3, final_evaluation=False)
    federation = Federation(workflow, ["a", "b", "c"], {"c": (0, "site_policy")})
    workflow.run()
    assert len(federation.stops) == 1
    assert "round 0 received 2 valid contributions but min_sites=3" in federation.stops[0]
    assert list(federation.targets("train")) == [0]


def test_transient_refusal_keeps_site():
    workflow = ConsortiaFedAvg(num_rounds=2, min_sites=1, final_evaluation=False)
    federation = Federation(workflow, ["a", "b"], {"b": (0, "busy")})
    workflow.run()
    assert federation.stops == []
    assert federation.targets("train") == {0: ["a", "b"], 1: ["a", "b"]}
    rejected = [payload for _, payload in federation.payloads("contribution.rejected")]
    assert [payload["reason_code"] for payload in rejected] == ["busy", "busy"]
    assert all("excluded_from_job" not in payload for payload in rejected)


def test_transient_refusal_stops_all_sites_job():
    workflow = ConsortiaFedAvg(num_rounds=2, final_evaluation=False)
    federation = Federation(workflow, ["a", "b"], {"b": (0, "busy")})
    workflow.run()
    assert len(federation.stops) == 1
    assert "round 0 received 1 valid contributions but min_sites=2" in federation.stops[0]


def test_later_refusal_drops_site_from_then_on():
    workflow = ConsortiaFedAvg(num_rounds=3, min_sites=1)
    federation = Federation(workflow, ["a", "b"], {"b": (1, "privacy_budget_exhausted")})
    workflow.run()
    assert federation.stops == []
    assert federation.targets("train") == {0: ["a", "b"], 1: ["a", "b"], 2: ["a"]}
    assert federation.targets("validate") == {3: ["a"]}
