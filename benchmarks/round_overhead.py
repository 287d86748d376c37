"""Round overhead of FLARE's stock FedAvg controller and ours on a provisioned 3-site federation, side by side.

Both jobs run the same site executor and training script on the same federation, one after the other, so the only
differences are the server workflow and the polling intervals. For each job the script reads the server's job log
(downloaded with the job result) for the time at which each round started, and takes a round's wall time as the
gap between consecutive round starts. Site training time is measured in this process on each site's own data with
the job's settings; a round cannot be faster than its slowest site, so

    overhead per round = median round wall time - max over sites of the training + evaluation time.

The script also reads the CPU time of each site's processes (the site and its job process) before and after each
job, so faster task polling shows up if it makes the sites busier, and the sites' CPU use per second while the
federation runs no job.

With ``--waiting-cpu`` it then runs two more jobs, at FLARE's default polling intervals and at ours, in which small
sites finish early and wait for their next task. It reports the CPU use of the server and of the site that waited
most, each as the lower quartile of its per-second samples.

Usage: ``python -m benchmarks.round_overhead [--rounds 6] [--waiting-cpu]``; results go to the "Round overhead"
section of ``docs/benchmarks.md``. Everything is written to a temporary folder and every started process is stopped.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import re
import statistics
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import psutil
import yaml

from app_custom.data.tabular import load_site_data
from app_custom.models.mlp import TabularMLP
from app_custom.site.training import LocalTrainingConfig, evaluate, train_local
from benchmarks._markdown import replace_section
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
    """Copy our job and replace the workflow with FLARE's FedAvg and the polling intervals with FLARE's defaults."""
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
    use_flare_result_polling(folder)
    return folder


def use_flare_result_polling(folder: Path) -> None:
    """Set the site executor of a prepared job to FLARE 2.9's in-process result polling interval, 0.5 s."""
    client_file = folder / "app/config/config_fed_client.json"
    client = json.loads(client_file.read_text())
    client["executors"][0]["executor"]["args"]["result_poll_interval"] = 0.5
    client_file.write_text(json.dumps(client, indent=2))


def waiting_job(destination: Path, *, flare_defaults: bool) -> Path:
    """Prepare a 2-round job with 30 local epochs, so sites with little data wait most of each round.

    With ``flare_defaults`` the job polls at FLARE's default intervals instead of ours.
    """
    name = "waiting_flare_defaults" if flare_defaults else "waiting_consortia"
    folder = prepare_job(
        "fedavg_clinical",
        destination,
        job_name=name,
        num_rounds=2,
        script_args="--local-epochs 30 --learning-rate 0.002 --hidden 32,16",
    )
    if flare_defaults:
        config_file = folder / "app/config/config_fed_server.json"
        config = json.loads(config_file.read_text())
        config["server"]["task_request_interval"] = 2
        config["workflows"][0]["args"]["task_check_period"] = 0.5
        config_file.write_text(json.dumps(config, indent=2))
        use_flare_result_polling(folder)
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


def process_tree_cpu_seconds(pid: int) -> float:
    """Return the CPU seconds used so far by a process, its live descendants and every child they have reaped."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for process in tree:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        # A reaped child's time, and its own reaped children's, moves into its parent's children_* fields.
        total += times.user + times.system + times.children_user + times.children_system
    return total


def sites_cpu_seconds(state) -> float:
    """Return the CPU seconds used so far by all site processes of the federation."""
    return sum(process_tree_cpu_seconds(record.pid) for record in state.processes if record.name in state.sites)


def job_polling_labels(folder: Path) -> str:
    """Return the polling intervals of a prepared job, for the results table."""
    from app_custom.flare.controller import ConsortiaFedAvg
    from app_custom.flare.site_trainer import SiteTrainer

    server = json.loads((folder / "app/config/config_fed_server.json").read_text())
    client = json.loads((folder / "app/config/config_fed_client.json").read_text())
    interval = server.get("server", {}).get("task_request_interval", 2)
    workflow = server["workflows"][0]
    if workflow["path"].endswith("ConsortiaFedAvg"):
        default_period = inspect.signature(ConsortiaFedAvg).parameters["task_check_period"].default
        period = workflow["args"].get("task_check_period", default_period)
    else:
        period = 0.5  # BaseModelController's default in FLARE 2.9, which FedAvg keeps
    default_poll = inspect.signature(SiteTrainer).parameters["result_poll_interval"].default
    result_poll = client["executors"][0]["executor"]["args"].get("result_poll_interval", default_poll)
    return f"task_request_interval {interval:g} s, task_check_period {period:g} s, result poll {result_poll:g} s"


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


def run(num_rounds: int, waiting_cpu: bool = False) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="consortia-bench-") as scratch:
        scratch_path = Path(scratch)
        consortium = yaml.safe_load((ROOT / "provisioning/consortium.yml").read_text())
        consortium["project"] = "consortia_bench"
        (scratch_path / "consortium.yml").write_text(yaml.safe_dump(consortium))
        result = provision(scratch_path / "consortium.yml", scratch_path / "ws")
        state = federation.up(result.workspace)
        try:
            times: dict[str, list[float]] = {}
            cpu: dict[str, tuple[float, float]] = {}
            with federation.flare_session(result.workspace, state, state.lead_user) as session:
                stock = stock_job(scratch_path / "stock", num_rounds, len(state.sites))
                ours = prepare_job("fedavg_clinical", scratch_path / "ours", num_rounds=num_rounds)
                jobs = {
                    f"FLARE FedAvg, stock ({job_polling_labels(stock)})": (stock, STOCK_START, STOCK_END),
                    f"Consortia ConsortiaFedAvg ({job_polling_labels(ours)})": (ours, OURS_START, OURS_END),
                }
                idle_cpu = measure_idle_cpu(state)
                for label, (folder, start, end) in jobs.items():
                    cpu_before, wall_before = sites_cpu_seconds(state), time.monotonic()
                    job_id = session.submit_job(str(folder))
                    session.monitor_job(job_id, timeout=900, poll_interval=1.0)
                    cpu[label] = (sites_cpu_seconds(state) - cpu_before, time.monotonic() - wall_before)
                    status = session.get_job_meta(job_id).get("status")
                    if status != "FINISHED:COMPLETED":
                        raise RuntimeError(f"benchmark job {label} ended with {status}")
                    times[label] = round_times(server_log(session, job_id, scratch_path / "results"), start, end)
                waiting: dict[str, dict[str, float]] = {}
                if waiting_cpu:
                    for flare_defaults in (True, False):
                        folder = waiting_job(scratch_path / "waiting", flare_defaults=flare_defaults)
                        waiting[folder.name] = measure_waiting_cpu(session, state, folder)
        finally:
            federation.down(result.workspace)
        training = site_training_seconds({s: result.workspace.kit_dir(state, s) / "data" for s in state.sites})
    return {
        "rounds": num_rounds,
        "round_times": times,
        "site_cpu": cpu,
        "idle_cpu": idle_cpu,
        "waiting_cpu": waiting,
        "server_name": state.server_name,
        "training_s": training,
        "load": os.getloadavg(),
    }


def sample_cpu_rates(pids: dict[str, int], stop: threading.Event, rates: dict[str, list[float]]) -> None:
    """Append each process tree's CPU seconds per second, once a second, until ``stop`` is set."""
    last = {name: process_tree_cpu_seconds(pid) for name, pid in pids.items()}
    last_time = time.monotonic()
    while not stop.wait(1.0):
        now = time.monotonic()
        for name, pid in pids.items():
            used = process_tree_cpu_seconds(pid)
            rates.setdefault(name, []).append((used - last[name]) / (now - last_time))
            last[name] = used
        last_time = now


def measure_waiting_cpu(session, state, folder: Path) -> dict[str, float]:
    """Run a waiting job and return the lower quartile of the per-second CPU use of the server and of each site.

    A small site spends most of the job waiting, but under load its contended training also stretches over many
    seconds, so the lower quartile of its per-second samples, not the median, is its CPU use while it waits.
    """
    pids = {record.name: record.pid for record in state.processes if record.name in [*state.sites, state.server_name]}
    rates: dict[str, list[float]] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=sample_cpu_rates, args=(pids, stop, rates), daemon=True)
    job_id = session.submit_job(str(folder))
    sampler.start()
    try:
        session.monitor_job(job_id, timeout=900, poll_interval=1.0)
    finally:
        stop.set()
        sampler.join()
    status = session.get_job_meta(job_id).get("status")
    if status != "FINISHED:COMPLETED":
        raise RuntimeError(f"waiting-CPU job {folder.name} ended with {status}")
    for name, values in sorted(rates.items()):
        print(f"{folder.name} {name} CPU seconds per second:", " ".join(f"{value:.3f}" for value in values))
    return {name: statistics.quantiles(values, n=4)[0] for name, values in rates.items() if len(values) > 1}


def measure_idle_cpu(state, seconds: float = 10.0) -> float:
    """Return the CPU seconds per second that all sites use together while the federation runs no job."""
    before = sites_cpu_seconds(state)
    time.sleep(seconds)
    return (sites_cpu_seconds(state) - before) / seconds


def render(outcome: dict[str, object]) -> str:
    training = float(outcome["training_s"])  # type: ignore[arg-type]
    load = outcome["load"]
    lines = [
        SECTION,
        "",
        f"`python -m benchmarks.round_overhead --rounds {outcome['rounds']}"
        f"{' --waiting-cpu' if outcome.get('waiting_cpu') else ''}` on a machine with "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"{datetime.now().date()}. One provisioned federation (server + 3 sites on 127.0.0.1, mTLS), both jobs with "
        "the same site executor and training script, run one after the other; round 0 (start-up) is left out of the "
        "median. Load average at the end of the run: {:.1f} {:.1f} {:.1f} (1, 5 and 15 minutes); with three sites "
        "sharing the CPUs, their real training time is longer than the in-process figure, so the overhead column is "
        "an upper bound.".format(*load),  # type: ignore[misc]
        "",
        f"Slowest site's local work per round, measured in-process: {training:.2f} s.",
        "",
        (
            "| workflow | median round (s) | overhead per round (s) | rounds measured | site CPU per round (s) "
            "| site CPU per wall second |"
        ),
        "|---|---|---|---|---|---|",
    ]
    medians = {}
    for label, times in outcome["round_times"].items():  # type: ignore[union-attr]
        steady = times[1:] or times
        median = statistics.median(steady)
        medians[label] = median
        cpu_seconds, wall_seconds = outcome["site_cpu"][label]  # type: ignore[index]
        lines.append(
            f"| {label} | {median:.2f} | {max(median - training, 0.0):.2f} | {len(steady)} "
            f"| {cpu_seconds / outcome['rounds']:.2f} | {cpu_seconds / wall_seconds:.2f} |"
        )
    stock, ours = list(medians.values())
    lines += ["", f"Ratio of median round times, ours / stock: {ours / stock:.2f}.", ""]
    for label, times in outcome["round_times"].items():  # type: ignore[union-attr]
        lines.append(f"- {label.split(' (')[0]}, every round (s): {', '.join(f'{value:.2f}' for value in times)}")
    lines += [
        "",
        (
            "*Site CPU* is the CPU time of the three sites' processes (each site and its job process) from submission "
            "to the end of the job, per round and per second of wall time; it includes training, start-up and "
            f"teardown. With no job running, the three sites used {outcome['idle_cpu']:.3f} CPU seconds per second "
            "together."
        ),
        "",
    ]
    lines += render_waiting_cpu(outcome)
    return "\n".join(lines)


def render_waiting_cpu(outcome: dict[str, object]) -> list[str]:
    """Return the paragraph on CPU use while sites wait inside a job, or nothing when it was not measured."""
    waiting: dict[str, dict[str, float]] = outcome.get("waiting_cpu") or {}  # type: ignore[assignment]
    if not waiting:
        return []
    server = str(outcome["server_name"])
    parts = []
    for name, label in (("waiting_flare_defaults", "FLARE's default intervals"), ("waiting_consortia", "ours")):
        quartiles = waiting[name]
        site_rates = {site: rate for site, rate in quartiles.items() if site != server}
        least_busy = min(site_rates, key=site_rates.__getitem__)
        parts.append(
            f"with {label}, the site that waited most ({least_busy}) used {site_rates[least_busy]:.3f} CPU seconds "
            f"per second and the server {quartiles.get(server, 0.0):.3f}"
        )
    return [
        (
            "CPU use while sites wait inside a job: `--waiting-cpu` runs a 2-round job with 30 local epochs, so small "
            "sites finish early and poll for their next task. The CPU time of each process tree is sampled every "
            "second, and the lower quartile of the samples is reported because contended training fills the upper "
            f"ones. {'. '.join(part[0].upper() + part[1:] for part in parts)}."
        ),
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds per job (round 0 is excluded from the median)")
    parser.add_argument(
        "--waiting-cpu",
        action="store_true",
        help="also measure CPU use while sites wait inside a job, at FLARE's default intervals and ours (about 2 min)",
    )
    args = parser.parse_args()
    text = render(run(args.rounds, waiting_cpu=args.waiting_cpu))
    print(text)
    replace_section(ROOT / "docs" / "benchmarks.md", SECTION, text)


if __name__ == "__main__":
    main()
