"""Algorithm kinds of a job, read from the app FLARE deploys to a site, for the site's policy.

A site's policy (``app_custom.flare.site_policy_guard``) accepts jobs by what they run, not by their name, because the
submitter chooses the name. The kind of a job comes from each server workflow in the app's ``config_fed_server.json``
and from the site-side options in its ``config_fed_client.json``:

==============  =====================================================================================================
kind            how it is recognised (``ConsortiaFedAvg`` or ``PrivateFedAvg`` workflow)
==============  =====================================================================================================
dp_he_fedavg    HE (``secure_aggregation`` argument or the ``EncryptParams`` result filter) with DP-FedAvg or DP-SGD
he_fedavg       HE without DP
dp_fedavg       ``client_dp`` argument (clipping and Gaussian noise of site updates)
dp_sgd          ``site_dp`` argument, or ``--dp-epsilon`` in the site's ``script_args`` (Opacus DP-SGD)
catfedavg       ``site_selection`` argument
fed_focal       ``aggregation.focal_beta`` or ``focal_top_fraction``, or ``--loss focal`` in ``script_args``
fedprox         ``--fedprox-mu`` other than 0 in ``script_args``
fedavg          none of the above
unknown         any other workflow class, or an app without ``config_fed_server.json``
==============  =====================================================================================================

The rows are checked top to bottom, so privacy settings decide first. This module imports nothing from FLARE.
"""

from __future__ import annotations

import io
import json
import shlex
import zipfile
from dataclasses import dataclass
from typing import Any

ALGORITHM_KINDS = (
    "fedavg",
    "fedprox",
    "fed_focal",
    "catfedavg",
    "dp_sgd",
    "dp_fedavg",
    "he_fedavg",
    "dp_he_fedavg",
)
UNKNOWN_KIND = "unknown"
CONSORTIA_FEDAVG = "app_custom.flare.controller.ConsortiaFedAvg"
PRIVATE_FEDAVG = "app_custom.flare.privacy.PrivateFedAvg"
HE_RESULT_FILTER = "app_custom.flare.he_filters.EncryptParams"
SERVER_CONFIG = "config_fed_server.json"
CLIENT_CONFIG = "config_fed_client.json"


@dataclass(frozen=True)
class WorkflowKind:
    """One server workflow of a job: its class path and the algorithm kind it runs."""

    path: str
    kind: str


def classify_workflow(workflow: dict[str, Any], client_config: dict[str, Any]) -> str:
    """Return the algorithm kind of one server workflow entry, using the site's client config for site-side options.

    Only our two workflow classes are classified; any other class is ``unknown``. Privacy settings take precedence
    (HE with DP, HE, DP-FedAvg, DP-SGD), then CatFedAvg selection, Fed-Focal, FedProx, and plain FedAvg.
    """
    path = str(workflow.get("path") or workflow.get("name") or "")
    if path not in (CONSORTIA_FEDAVG, PRIVATE_FEDAVG):
        return UNKNOWN_KIND
    args = workflow.get("args") or {}
    script_args = _script_args(client_config)
    he = bool(args.get("secure_aggregation")) or HE_RESULT_FILTER in _result_filter_paths(client_config)
    dp_fedavg = bool(args.get("client_dp"))
    dp_sgd = bool(args.get("site_dp")) or "--dp-epsilon" in script_args
    if he and (dp_fedavg or dp_sgd):
        return "dp_he_fedavg"
    if he:
        return "he_fedavg"
    if dp_fedavg:
        return "dp_fedavg"
    if dp_sgd:
        return "dp_sgd"
    if args.get("site_selection"):
        return "catfedavg"
    aggregation = args.get("aggregation") or {}
    focal_aggregation = "focal_beta" in aggregation or "focal_top_fraction" in aggregation
    if focal_aggregation or _option(script_args, "--loss") == "focal":
        return "fed_focal"
    if _float_option(script_args, "--fedprox-mu") not in (None, 0.0):
        return "fedprox"
    return "fedavg"


def _script_args(client_config: dict[str, Any]) -> list[str]:
    words: list[str] = []
    for entry in client_config.get("executors") or []:
        executor = entry.get("executor") or {}
        words.extend(shlex.split(str((executor.get("args") or {}).get("script_args") or "")))
    return words


def _result_filter_paths(client_config: dict[str, Any]) -> set[str]:
    paths: set[str] = set()
    for chain in client_config.get("task_result_filters") or []:
        paths.update(str(f.get("path") or f.get("name")) for f in chain.get("filters") or [])
    return paths


def _option(words: list[str], name: str) -> str | None:
    for i, word in enumerate(words):
        if word == name and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def _float_option(words: list[str], name: str) -> float | None:
    value = _option(words, name)
    try:
        return None if value is None else float(value)
    except ValueError:
        return float("nan")


def classify_app(app_data: bytes) -> list[WorkflowKind]:
    """Return the kind of every server workflow in a deployed app (the zip FLARE sends to the site).

    Raises:
        ValueError: when the zip or one of its JSON configs cannot be read.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(app_data)) as archive:
            server = _read_config(archive, SERVER_CONFIG)
            client = _read_config(archive, CLIENT_CONFIG) or {}
    except zipfile.BadZipFile as exc:
        raise ValueError(f"the deployed app is not a readable zip: {exc}") from None
    if server is None:
        return []
    return [
        WorkflowKind(path=str(w.get("path") or w.get("name")), kind=classify_workflow(w, client))
        for w in server.get("workflows") or []
    ]


def _read_config(archive: zipfile.ZipFile, file_name: str) -> dict[str, Any] | None:
    names = [n for n in archive.namelist() if n == f"config/{file_name}" or n.endswith(f"/config/{file_name}")]
    if not names:
        return None
    try:
        config = json.loads(archive.read(min(names, key=len)))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{file_name} of the deployed app is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError(  # noqa: TRY004 - a config of the wrong shape is invalid input, like invalid JSON
            f"{file_name} of the deployed app is not a JSON object"
        )
    return config
