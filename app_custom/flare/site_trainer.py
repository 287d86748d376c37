"""Site executor: FLARE's Client API executor running one of our installed training scripts.

Jobs name a script by key (``tabular``), never by path, so no code travels with the job and the site's class
allow-list (``app_custom.``) covers everything that runs. The data folder is the site's own choice, read from
``local/consortia_site.json`` in the site's kit, and is passed to the script as ``--data-dir``; a job cannot point a
site at another folder. The kit folder itself is passed as ``--site-root``, where the script reads the site's
privacy budget and keeps its privacy ledger; a job cannot set it either.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.executors.client_api import in_process_backend
from nvflare.app_common.executors.client_api_executor import ClientAPIExecutor

SCRIPTS = {"tabular": "app_custom.site.train_tabular"}
SITE_CONFIG_FILE = "consortia_site.json"

# Seconds between the in-process backend's checks for the script's result, and between the script's checks for a new
# task. FLARE 2.9 polls every 0.5 s, which added about 0.25 s on each side of every task.
RESULT_POLL_INTERVAL = 0.05


class SiteConfigError(RuntimeError):
    """Raised when the site's local configuration is missing or invalid."""


def script_path(script: str) -> str:
    """Return the installed file of a training script key.

    Raises:
        ValueError: naming the known keys when ``script`` is unknown.
    """
    if script not in SCRIPTS:
        raise ValueError(f"unknown training script {script!r}: use one of {sorted(SCRIPTS)}")
    spec = importlib.util.find_spec(SCRIPTS[script])
    if spec is None or spec.origin is None:
        raise ValueError(f"training script module {SCRIPTS[script]} is not installed at this site")
    return spec.origin


def site_data_dir(site_root: str | Path) -> Path:
    """Read the site's data folder from ``local/consortia_site.json`` (relative paths are relative to the kit).

    Raises:
        SiteConfigError: when the file is missing or names no existing folder.
    """
    config_file = Path(site_root) / "local" / SITE_CONFIG_FILE
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SiteConfigError(f"site configuration not found: {config_file}; provision the site again") from None
    except json.JSONDecodeError as exc:
        raise SiteConfigError(f"site configuration {config_file} is not valid JSON: {exc}") from None
    data_dir = Path(config.get("data_dir", "data"))
    if not data_dir.is_absolute():
        data_dir = Path(site_root) / data_dir
    if not data_dir.is_dir():
        raise SiteConfigError(
            f"site data folder {data_dir} (from {config_file}) does not exist: put the site's data there "
            "or change data_dir"
        )
    return data_dir


class SiteTrainer(ClientAPIExecutor):
    """Runs an installed training script in process through the Client API.

    Args:
        script: key of the training script (see ``SCRIPTS``).
        script_args: extra command-line arguments for the script (``--data-dir`` is added by the site).
        result_poll_interval: seconds between the executor's checks for the script's result and between the
            script's checks for a new task (FLARE 2.9 uses 0.5 s). Each check is a flag test, so shorter intervals
            cost little CPU, and the checks run only while a job runs at this site.
    """

    def __init__(
        self,
        script: str = "tabular",
        script_args: str = "",
        result_poll_interval: float = RESULT_POLL_INTERVAL,
        **kwargs,
    ) -> None:
        if isinstance(result_poll_interval, bool) or not isinstance(result_poll_interval, (int, float)) or not (
            0 < result_poll_interval <= 5
        ):
            raise ValueError(f"invalid result_poll_interval {result_poll_interval!r}: use seconds > 0 and <= 5")
        site_owned = {"--data-dir", "--site-root"} & {arg.split("=", 1)[0] for arg in shlex.split(script_args)}
        if site_owned:
            raise ValueError(
                f"script_args must not set {', '.join(sorted(site_owned))}: each site chooses its own data folder "
                "and keeps its own privacy budget"
            )
        super().__init__(
            execution_mode="in_process",
            task_script_path=script_path(script),
            task_script_args=script_args,
            params_exchange_format="pytorch",
            server_expected_format="numpy",
            **kwargs,
        )
        self._base_script_args = script_args
        self._result_poll_interval = float(result_poll_interval)

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            site_root = fl_ctx.get_engine().get_workspace().get_root_dir()
            try:
                data_dir = site_data_dir(site_root)
            except SiteConfigError as exc:
                self.system_panic(str(exc), fl_ctx)
                return
            site_args = f"--data-dir {shlex.quote(str(data_dir))} --site-root {shlex.quote(str(site_root))}"
            self._task_script_args = f"{self._base_script_args} {site_args}".strip()
            self.log_info(fl_ctx, f"training script reads site data from {data_dir}")
            # NOTE: FLARE 2.9 dropped the in-process executor's result_pull_interval argument and reads the module
            # constant _RESULT_POLL_INTERVAL instead: at each check for a result, and once at start-up for the
            # script's task checks. It is set here, before the backend starts, and applies to every in-process Client
            # API executor of this job's process.
            in_process_backend._RESULT_POLL_INTERVAL = self._result_poll_interval
        super().handle_event(event_type, fl_ctx)
