"""Round overhead of FLARE's stock FedAvg controller and ours on a provisioned 3-site federation, side by side.

Both jobs run the same site executor and training script on the same federation, one after the other, so the only
difference is the server workflow and its task polling settings. For each job the script reads the server's job log
(downloaded with the job result) for the time at which each round started, and takes a round's wall time as the
gap between consecutive round starts. Site training time is measured in this process on each site's own data with
the job's settings; a round cannot be faster than its slowest site, so

    overhead per round = median round wall time - max over sites of the training + evaluation time.

Usage: ``python -m benchmarks.round_overhead [--rounds 6]``; results go to the "Round overhead" section of
``docs/benchmarks.md``. Everything is written to a temporary folder and every started process is stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

from app_custom.data.tabular import load_site_data
from app_custom.models.mlp import TabularMLP
from app_custom.site.training import LocalTrainingConfig, evaluate, train_local
from consortia import federation
from consortia.jobs import prepare_job
from provisioning.provision import provision

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Round overhead"
TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
# FLARE's FedAvg prints its banners on their own lines after the stamped log line, so patterns match any line.
STOCK_START = re.compile(r"Round (\d+) started\.")
STOCK_END = re.compile(r"Finished FedAvg\.")
OURS_START = re.compile(r"round (\d+) started with sites")
OURS_END = re.compile(r"training finished after round")


def stock_job(destination: Path, num_rounds: int, num_sites: int) -> Path:
    """Copy our job and replace the workflow with FLARE's FedAvg and FLARE's default task polling."""
    folder = prepare_job("fedavg_clinical", destination, job_name="stock_fedavg", num_rounds=num_rounds)
    config_file = folder / "app/config/config_fed_server.json"
    config = json.loads(config_file.read_text())
    config.pop("server", None)
    config["workflows"] = [
        {
            "id": "fedavg",
            "path": "nvflare.app_common.workflows.fedavg.FedAvg",
            "args": {"num_clients": num_sites, "num_rounds": num_rounds, "persistor_id": "persistor"},
        }
    ]
    config_file.write_text(json.dumps(config, indent=2))
    return folder


def round_times(log_text: str, start: re.Pattern, end: re.Pattern) -> list[float]:
    """Return each round's wall time in seconds from a server job log."""
    stamps = []
    finish = None
    last_stamp = None
    for line in log_text.splitlines():
        if match := TIMESTAMP.match(line):
            last_stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
        if last_stamp is None:
            continue
        if start.search(line):
            stamps.append(last_stamp)
        elif end.search(line):
            finish = last_stamp
    if finish is not None:
        stamps.append(finish)
    return [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:])]


def server_log(session, job_id: str, destination: Path) -> str:
    result = Path(session.download_job_result(job_id, destination=str(destination)))
    logs = sorted(result.rglob("log.txt"))
    server_logs = [p for p in logs if "hospital" not in str(p)]
    return "\n".join(p.read_text(errors="replace") for p in (server_logs or logs))


def site_training_seconds(site_dirs: dict[str, Path], repeats: int = 3) -> float:
    """Return the slowest site's time for one round of local work (evaluate, train 2 epochs, evaluate)."""
    import torch

    torch.set_num_threads(1)
    slowest = 0.0
    for folder in site_dirs.values():
        data = load_site_data(folder)
        best = float("inf")
        for _ in range(repeats):
            model = TabularMLP(hidden=(32, 16), seed=0)
            started = time.perf_counter()
            evaluate(model, data.x_test, data.y_test)
            train_local(model, data.x_train, data.y_train, LocalTrainingConfig(local_epochs=2, learning_rate=0.002))
            evaluate(model, data.x_test, data.y_test)
            best = min(best, time.perf_counter() - started)
        slowest = max(slowest, best)
    return slowest


def run(num_rounds: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="consortia-bench-") as scratch:
        scratch_path = Path(scratch)
        consortium = yaml.safe_load((ROOT / "provisioning/consortium.yml").read_text())
        consortium["project"] = "consortia_bench"
        (scratch_path / "consortium.yml").write_text(yaml.safe_dump(consortium))
        result = provision(scratch_path / "consortium.yml", scratch_path / "ws")
        state = federation.up(result.workspace)
        try:
            times = {}
            with federation.flare_session(result.workspace, state, state.lead_user) as session:
                jobs = {
                    "FLARE FedAvg (stock, task_request_interval 2 s)": (
                        stock_job(scratch_path / "stock", num_rounds, len(state.sites)), STOCK_START, STOCK_END
                    ),
                    "Consortia ConsortiaFedAvg (task_request_interval 0.25 s)": (
                        prepare_job("fedavg_clinical", scratch_path / "ours", num_rounds=num_rounds), OURS_START, OURS_END
                    ),
                }
                for label, (folder, start, end) in jobs.items():
                    job_id = session.submit_job(str(folder))
                    session.monitor_job(job_id, timeout=900, poll_interval=1.0)
                    status = session.get_job_meta(job_id).get("status")
                    if status != "FINISHED:COMPLETED":
                        raise RuntimeError(f"benchmark job {label} ended with {status}")
                    times[label] = round_times(server_log(session, job_id, scratch_path / "results"), start, end)
        finally:
            federation.down(result.workspace)
        training = site_training_seconds({s: result.workspace.kit_dir(state, s) / "data" for s in state.sites})
    return {"rounds": num_rounds, "round_times": times, "training_s": training, "load": os.getloadavg()[0]}


def render(outcome: dict[str, object]) -> str:
    training = float(outcome["training_s"])  # type: ignore[arg-type]
    lines = [
        SECTION,
        "",
        f"`python -m benchmarks.round_overhead --rounds {outcome['rounds']}` on a machine with "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"{datetime.now().date()}. One provisioned federation (server + 3 sites on 127.0.0.1, mTLS), both jobs with "
        "the same site executor; round 0 (start-up) is left out of the median. "
        f"Load average at the end of the run: {outcome.get('load', 0.0):.1f}; with three sites sharing the CPUs, "
        "their real training time is longer than the in-process figure, so the overhead column is an upper bound.",
        "",
        f"Slowest site's local work per round, measured in-process: {training:.2f} s.",
        "",
        "| workflow | median round (s) | overhead per round (s) | rounds measured |",
        "|---|---|---|---|",
    ]
    medians = {}
    for label, times in outcome["round_times"].items():  # type: ignore[union-attr]
        steady = times[1:] or times
        median = statistics.median(steady)
        medians[label] = median
        lines.append(f"| {label} | {median:.2f} | {max(median - training, 0.0):.2f} | {len(steady)} |")
    stock, ours = list(medians.values())
    lines += ["", f"Ratio of median round times, ours / stock: {ours / stock:.2f}.", ""]
    return "\n".join(lines)


def write_section(text: str, doc: Path = ROOT / "docs" / "benchmarks.md") -> None:
    """Replace this benchmark's section of ``docs/benchmarks.md`` and keep the others."""
    content = doc.read_text() if doc.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"{re.escape(SECTION)}\n.*?(?=\n## |\Z)", re.S)
    content = pattern.sub(text.rstrip() + "\n", content) if SECTION in content else content.rstrip() + "\n\n" + text
    doc.write_text(content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds per job (round 0 is excluded from the median)")
    args = parser.parse_args()
    text = render(run(args.rounds))
    print(text)
    write_section(text)


if __name__ == "__main__":
    main()
