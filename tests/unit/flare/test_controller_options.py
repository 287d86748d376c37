import pytest
from nvflare.apis.impl.wf_comm_server import WFCommServer

from app_custom.flare.controller import ConsortiaFedAvg

HISTOGRAMS = {"a": [50, 1], "b": [30, 30], "c": [0, 90]}


def controller(**selection) -> ConsortiaFedAvg:
    workflow = ConsortiaFedAvg(site_selection=selection)
    workflow._class_counts = dict(HISTOGRAMS)
    return workflow


def test_budget_selects_k_sites():
    workflow = controller(variant="budget", budget=2)
    assert len(workflow._select_sites(sorted(HISTOGRAMS))) == 2


def test_candidates_vary_between_rounds():
    workflow = controller(variant="budget", budget=1, candidates_per_round=1)
    chosen = set()
    for round_number in range(6):
        workflow._round = round_number
        selected = workflow._select_sites(sorted(HISTOGRAMS))
        assert len(selected) == 1
        assert isinstance(selected[0], str)
        chosen.update(selected)
    assert len(chosen) > 1


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"num_rounds": 0}, "invalid num_rounds 0"),
        ({"min_sites": 0}, "invalid min_sites 0"),
        ({"round_timeout": -1}, "invalid round_timeout -1"),
        ({"site_selection": {"variant": "all"}}, "use variant 'full_coverage' or 'budget'"),
        ({"site_selection": {"variant": "budget", "budget": 1, "candidates_per_round": 0}}, "candidates_per_round 0"),
        ({"aggregation": {"method": "mean"}}, "method"),
        ({"aggregation": {"method": "median", "focal_beta": 1.0}}, "applies to method 'fedavg'"),
    ],
)
def test_invalid_settings_rejected(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        ConsortiaFedAvg(**kwargs)


def test_check_period_reaches_monitor():
    workflow = ConsortiaFedAvg(task_check_period=0.05)
    workflow.set_communicator(WFCommServer())
    workflow._apply_task_check_period()
    assert workflow.communicator._task_check_period == 0.05
