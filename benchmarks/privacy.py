"""Benchmark the privacy mechanisms on the demo-sized model: DP-SGD step time, CKKS rounds and an HE job.

Model: the demo's ``TabularMLP`` with 9 inputs (the flchain feature count), two hidden layers of 64 and one logit
(4,865 float32 params in 6 tensors). Data: random standard-normal features with 27.5 % positive labels, one site's
share of flchain (2,600 rows); timings do not depend on the values.

- DP-SGD: time per optimizer step of ``dp_sgd.make_private`` + ``train_private_epoch`` (Poisson sampling, expected
  batch 64, per-sample clipping, noise, accounting) with our one-pass ``fast_linear`` clipping (the default for
  this model) and with each of Opacus' per-sample gradient modes, ghost clipping included, against plain SGD with a
  shuffled batch-64 loader (batched fetch as in the site's ``train_local``, and the per-row fetch it used before).
  Data loading is inside the timed epochs, and every variant runs with the same torch thread count
  (``--threads``).
- HE: ``benchmarks.he_round``: our CKKS filters and aggregator against FLARE's stock ones, in process, and the
  round wall time of an HE job against plaintext FedAvg on a provisioned federation.
- CKKS presets: one round of ``he.encrypt_params`` at 3 sites, ``he.aggregate_encrypted`` and ``he.decrypt_params``
  against the plaintext weighted FedAvg of the same params.

Each measurement is the median over repeats. Usage::

    .venv/bin/python benchmarks/privacy.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app_custom.core.privacy import he
from app_custom.core.privacy._loading import BatchedTensorDataset, first_item, tensor_data_loader
from app_custom.core.privacy.dp_sgd import (
    DEFAULT_GRAD_SAMPLE_MODE,
    DPSGDConfig,
    PrivateTraining,
    make_private,
    train_private_epoch,
)
from app_custom.models.mlp import TabularMLP
from benchmarks import he_round
from benchmarks._markdown import replace_section

_SECTION = "## Privacy"
_NUM_FEATURES = 9
_NUM_ROWS = 2600
_BATCH_SIZE = 64
_SITE_WEIGHTS = (2600.0, 2400.0, 2874.0)
PLAIN_DATALOADER = "plain SGD, per-row DataLoader"
PLAIN_BATCHED = "plain SGD, batched fetch (as the site's train_local)"
DP_DEFAULT = "DP-SGD, fast_linear, batched fetch (default for this model)"


def _dataset(seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(_NUM_ROWS, _NUM_FEATURES, generator=generator)
    labels = (torch.rand(_NUM_ROWS, generator=generator) < 0.275).float()
    return TensorDataset(features, labels)


def _model() -> nn.Module:
    return TabularMLP(num_features=_NUM_FEATURES, hidden=(64, 64), dropout=0.1, seed=0)


def _plain_epoch(loader: DataLoader) -> Callable[[], int]:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = nn.functional.binary_cross_entropy_with_logits

    def run_epoch() -> int:
        steps = 0
        for inputs, targets in loader:
            optimizer.zero_grad()
            loss_fn(model(inputs), targets).backward()
            optimizer.step()
            steps += 1
        return steps

    return run_epoch


def _private_epoch(loader: DataLoader, config: DPSGDConfig, mode: str) -> tuple[Callable[[], int], PrivateTraining]:
    model = _model()
    training = make_private(model, torch.optim.SGD(model.parameters(), lr=0.05), loader, config, grad_sample_mode=mode)

    def run_epoch() -> int:
        return train_private_epoch(training, nn.functional.binary_cross_entropy_with_logits).num_steps

    return run_epoch, training


def _ghost_epoch(loader: DataLoader, noise_multiplier: float) -> Callable[[], int]:
    """Return an epoch of Opacus' ghost clipping, which ``make_private`` does not offer; empty batches are skipped."""
    from opacus import PrivacyEngine

    model = _model()
    private_model, optimizer, criterion, private_loader = PrivacyEngine(accountant="rdp").make_private(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        criterion=nn.BCEWithLogitsLoss(),
        data_loader=loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=1.0,
        poisson_sampling=True,
        grad_sample_mode="ghost",
    )

    def run_epoch() -> int:
        steps = 0
        for inputs, targets in private_loader:
            optimizer.zero_grad()
            if len(inputs):
                criterion(private_model(inputs), targets).backward()
                optimizer.step()
            steps += 1
        return steps

    return run_epoch


def bench_dp_sgd(epochs: int) -> dict[str, object]:
    """Return ms per step of plain SGD and of DP-SGD variants, timed in turns, with calibration facts.

    Each timed pass runs one epoch of every variant in turn, so a change in machine load affects all of them.
    """
    dataset = _dataset()
    features, labels = dataset.tensors
    config = DPSGDConfig(
        target_epsilon=3.0, target_delta=1e-5, max_grad_norm=1.0, epochs=epochs + 2, batch_size=_BATCH_SIZE
    )
    start = time.perf_counter()
    default_epoch, default_training = _private_epoch(
        tensor_data_loader(features, labels, batch_size=_BATCH_SIZE), config, DEFAULT_GRAD_SAMPLE_MODE
    )
    assert default_training.grad_sample_mode == "fast_linear", default_training.grad_sample_mode
    calibration_seconds = time.perf_counter() - start
    cases: dict[str, Callable[[], int]] = {
        PLAIN_DATALOADER: _plain_epoch(DataLoader(dataset, batch_size=_BATCH_SIZE, shuffle=True)),
        PLAIN_BATCHED: _plain_epoch(
            DataLoader(BatchedTensorDataset(features, labels), batch_size=_BATCH_SIZE, shuffle=True, collate_fn=first_item)
        ),
        "DP-SGD, Opacus hooks, per-row DataLoader": _private_epoch(
            DataLoader(dataset, batch_size=_BATCH_SIZE), config, "hooks"
        )[0],
        "DP-SGD, Opacus hooks, batched fetch": _private_epoch(
            tensor_data_loader(features, labels, batch_size=_BATCH_SIZE), config, "hooks"
        )[0],
        "DP-SGD, Opacus functorch, batched fetch": _private_epoch(
            tensor_data_loader(features, labels, batch_size=_BATCH_SIZE), config, "functorch"
        )[0],
        "DP-SGD, Opacus ghost clipping, batched fetch": _ghost_epoch(
            tensor_data_loader(features, labels, batch_size=_BATCH_SIZE), default_training.noise_multiplier
        ),
        "DP-SGD, Opacus ew, batched fetch (previous default)": _private_epoch(
            tensor_data_loader(features, labels, batch_size=_BATCH_SIZE), config, "ew"
        )[0],
        DP_DEFAULT: default_epoch,
    }
    per_step: dict[str, list[float]] = {name: [] for name in cases}
    for run_epoch in cases.values():
        run_epoch()  # warm-up
    for _ in range(epochs):
        for name, run_epoch in cases.items():
            started = time.perf_counter()
            steps = run_epoch()
            per_step[name].append((time.perf_counter() - started) / steps)
    return {
        "step_ms": {name: statistics.median(values) * 1e3 for name, values in per_step.items()},
        "make_private": calibration_seconds,
        "noise_multiplier": default_training.noise_multiplier,
        "epsilon": default_training.epsilon(),
        "steps": default_training.steps_taken,
    }


def bench_he(preset: he.CKKSPreset, repeats: int) -> dict[str, float]:
    """Return seconds and bytes of one 3-site CKKS round with ``preset``, and the plaintext FedAvg baseline."""
    start = time.perf_counter()
    secret_bytes, public_bytes = he.make_contexts(preset)
    secret, public = he.load_context(secret_bytes, preset), he.load_context(public_bytes, preset)
    context_seconds = time.perf_counter() - start

    rng = np.random.default_rng(0)
    state = _model().state_dict()
    shapes = {key: tuple(tensor.shape) for key, tensor in state.items()}
    sites = [
        {key: (tensor.numpy() + rng.normal(0, 0.01, tensor.shape)).astype(np.float32) for key, tensor in state.items()}
        for _ in _SITE_WEIGHTS
    ]
    total_weight = sum(_SITE_WEIGHTS)

    timings: dict[str, list[float]] = {"encrypt": [], "aggregate": [], "decrypt": [], "plaintext": []}
    for _ in range(repeats):
        start = time.perf_counter()
        encrypted = [he.encrypt_params(params, secret, w) for params, w in zip(sites, _SITE_WEIGHTS, strict=True)]
        timings["encrypt"].append((time.perf_counter() - start) / len(sites))

        start = time.perf_counter()
        aggregate = he.aggregate_encrypted(encrypted, public)
        timings["aggregate"].append(time.perf_counter() - start)

        start = time.perf_counter()
        result = he.decrypt_params(aggregate, secret, shapes, total_weight)
        timings["decrypt"].append(time.perf_counter() - start)

        start = time.perf_counter()
        expected = {
            key: sum(w * params[key].astype(np.float64) for params, w in zip(sites, _SITE_WEIGHTS, strict=True))
            / total_weight
            for key in shapes
        }
        timings["plaintext"].append(time.perf_counter() - start)

    error = max(float(np.max(np.abs(result[key] - expected[key]))) for key in shapes)
    medians = {name: statistics.median(values) for name, values in timings.items()}
    return {
        **medians,
        "round": medians["encrypt"] + medians["aggregate"] + medians["decrypt"],
        "context": context_seconds,
        "upload_bytes": sum(len(chunk) for chunks in encrypted[0].values() for chunk in chunks),
        "plain_bytes": sum(array.nbytes for array in sites[0].values()),
        "ciphertexts": sum(len(chunks) for chunks in encrypted[0].values()),
        "params": sum(array.size for array in sites[0].values()),
        "public_context_bytes": len(public_bytes),
        "secret_context_bytes": len(secret_bytes),
        "max_error": error,
    }


def machine_description() -> str:
    """Return the CPU model, CPU count, memory, load average and library versions, for the results page."""
    import opacus
    import tenseal

    model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        match = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        model = match.group(1).strip() if match else model
    memory = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        match = re.search(r"MemTotal:\s*(\d+) kB", meminfo.read_text())
        memory = f", {int(match.group(1)) / 2**20:.0f} GiB RAM" if match else ""
    load = "load average at start {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    return (
        f"{model}, {os.cpu_count()} CPUs{memory}, {load}; Python {platform.python_version()}, "
        f"torch {torch.__version__} (CPU threads: {torch.get_num_threads()}), opacus {opacus.__version__}, "
        f"tenseal {tenseal.__version__}, numpy {np.__version__}"
    )


def _dp_lines(dp: dict[str, Any]) -> list[str]:
    step_ms: dict[str, float] = dp["step_ms"]
    per_row, batched = step_ms[PLAIN_DATALOADER], step_ms[PLAIN_BATCHED]
    lines = [
        "### DP-SGD step (Poisson sampling and RDP accountant from Opacus)",
        "",
        "| training | ms per step | ratio to plain, batched fetch (the site's) | ratio to plain, per-row DataLoader |",
        "|---|---|---|---|",
    ]
    for name, value in step_ms.items():
        lines.append(f"| {name} | {value:.2f} | {value / batched:.2f} | {value / per_row:.2f} |")
    lines += [
        "",
        (f"Expected batch {_BATCH_SIZE} (Poisson) for DP-SGD, batch {_BATCH_SIZE} for plain SGD; every variant ran one "
        "epoch in turn per timed pass, so load changes hit all of them. \"batched fetch\" draws the same batches "
        "(Opacus' Poisson sampler for DP-SGD, a shuffle for plain SGD) and fetches the drawn rows with one tensor "
        "index instead of one `__getitem__` per row. The DP-SGD step includes sampling, per-sample gradients, "
        "clipping, noise and the accountant update. `fast_linear` is our one-pass clipping for models whose "
        "trainable parameters are all in `nn.Linear` (ghost norms with book-keeping, "
        "`app_custom/core/privacy/_linear_clipping.py`); the Opacus rows use `PrivacyEngine.make_private` with that "
        "`grad_sample_mode`. Opacus' ghost clipping is not offered by `make_private`."),
        "",
        (f"`make_private` with noise calibration took {dp['make_private']:.2f} s once per job "
        f"(noise_multiplier {dp['noise_multiplier']:.3f} for epsilon 3 at delta 1e-5 over {dp['steps']:.0f} steps; "
        f"epsilon reached {dp['epsilon']:.3f})."),
    ]
    return lines


def _crypto_lines(crypto: dict[str, dict[str, float]]) -> list[str]:
    lines = [
        "### CKKS crypto path per round: ours against FLARE's stock `nvflare.app_opt.he`",
        "",
        ("3 sites, demo model, FLARE's HEBuilder context (N=8192, moduli [60, 40, 40], scale 2^40, symmetric, relin "
        "keys). Ours: `EncryptParams` (packed), `EncryptedRoundAggregator`, `DecryptAggregate`. Stock: "
        "`HEModelEncryptor`, `HEInTimeAccumulateWeightedAggregator`, `HEModelDecryptor` with FLContexts from "
        "`FLContextManager`. Times include FLARE's FOBS serialization of each message; sizes are the serialized "
        "messages. Command: `.venv/bin/python -m benchmarks.he_round` (also run by this script)."),
        "",
        ("| components | encrypt per site (ms) | aggregate 3 (ms) | decrypt (ms) | crypto per round (ms) "
        "| upload per site (KiB) | download (KiB) | max abs error of the mean |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in crypto.items():
        total = row["encrypt"] + row["aggregate"] + row["decrypt"]
        lines.append(
            f"| {name} | {row['encrypt'] * 1e3:.1f} | {row['aggregate'] * 1e3:.1f} | {row['decrypt'] * 1e3:.1f} "
            f"| {total * 1e3:.1f} | {row['upload_bytes'] / 1024:,.0f} | {row['download_bytes'] / 1024:,.0f} "
            f"| {row['max_error']:.1e} |"
        )
    lines += [
        "",
        ("FLARE's CKKS decomposer serializes each vector together with its context (keys included), and the stock "
        "encryptor starts one vector per layer, which explains most of the size and time difference."),
    ]
    return lines


def _federated_lines(federated: dict[str, Any]) -> list[str]:
    runs: dict[str, list[list[float]]] = federated["round_times"]
    # The first round of a run includes the job's start-up (10-30 s here), so the median pools the later rounds.
    medians = {job: statistics.median(t for times in job_runs for t in times[1:]) for job, job_runs in runs.items()}
    lines = [
        "### Federated round: HE job against plaintext FedAvg",
        "",
        (f"{federated['sites']} sites on 127.0.0.1, one federation provisioned with the HE builder, each job run twice "
        f"with {federated['rounds']} rounds, in the order plaintext, HE, HE, plaintext, with the job configs as "
        "committed (same site script and model `TabularMLP(hidden=(32, 16))`). Round wall time is the gap between "
        "round starts in the server's job log. The first round of a run includes job start-up, so the median pools "
        "the later rounds of both runs."),
        "",
        "| job | round wall times, run 1; run 2 (s) | median after round 0 (s) | ratio to plaintext |",
        "|---|---|---|---|",
    ]
    plain = medians["fedavg_clinical"]
    for job, job_runs in runs.items():
        joined = "; ".join(", ".join(f"{value:.2f}" for value in times) for times in job_runs)
        lines.append(f"| {job} | {joined} | {medians[job]:.2f} | {medians[job] / plain:.2f} |")
    return lines


def format_results(
    dp: dict[str, Any],
    rounds: dict[str, dict[str, float]],
    crypto: dict[str, dict[str, float]],
    federated: dict[str, Any] | None,
    description: str,
) -> str:
    """Return the markdown body of the Privacy section."""
    today = datetime.date.today().isoformat()
    load_end = "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    lines = [
        (f"Measured by `benchmarks/privacy.py` on {today}. Machine: {description}; load average at the end "
        f"{load_end}. Other processes shared these CPUs, and ratios of the same case differed by up to 2x between "
        "runs an hour apart, so compare cases within one run."),
        "",
        (f"Model: `TabularMLP(num_features={_NUM_FEATURES}, hidden=(64, 64))`, {rounds['ckks_8192']['params']:,.0f} "
        f"float32 params in 6 tensors; one site has {_NUM_ROWS:,} rows (random values). Times are medians. "
        "Command: `.venv/bin/python benchmarks/privacy.py --write docs/benchmarks.md`."),
        "",
        *_dp_lines(dp),
        "",
        *_crypto_lines(crypto),
        "",
    ]
    if federated is not None:
        lines += [*_federated_lines(federated), ""]
    lines += [
        "### CKKS presets, core functions only",
        "",
        ("`he.encrypt_params` at 3 sites (packed), `he.aggregate_encrypted`, `he.decrypt_params` at a site, without "
        "FLARE messages, against the plaintext weighted FedAvg in numpy."),
        "",
        ("| preset | encrypt per site (ms) | aggregate 3 (ms) | decrypt (ms) | crypto per round (ms) "
        "| plaintext FedAvg (ms) | ciphertexts per site | upload per site (KiB) | float32 (KiB) "
        "| max abs error of the mean |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rounds.items():
        lines.append(
            f"| {name} | {row['encrypt'] * 1e3:.1f} | {row['aggregate'] * 1e3:.1f} | {row['decrypt'] * 1e3:.1f} "
            f"| {row['round'] * 1e3:.1f} | {row['plaintext'] * 1e3:.3f} | {row['ciphertexts']:.0f} "
            f"| {row['upload_bytes'] / 1024:,.0f} | {row['plain_bytes'] / 1024:.1f} | {row['max_error']:.1e} |"
        )
    first = rounds["ckks_8192"]
    lines += [
        "",
        ("Sites encrypt in parallel, so three encryptions add no wall time. Context generation is one-off per "
        f"consortium ({first['context'] * 1e3:.0f} ms for ckks_8192). The public context the server holds is "
        f"{first['public_context_bytes'] / 1024:,.0f} KiB, the secret context for sites "
        f"{first['secret_context_bytes'] / 1024:,.0f} KiB."),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per training mode")
    parser.add_argument("--repeats", type=int, default=5, help="timed HE rounds per preset")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads; the model is too small to gain")
    parser.add_argument("--federated-rounds", type=int, default=5, help="rounds per federated job; 0 skips them")
    parser.add_argument("--write", type=Path, help="markdown file whose '## Privacy' section gets the results")
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(args.threads)
    description = machine_description()

    dp = bench_dp_sgd(args.epochs)
    rounds = {name: bench_he(preset, args.repeats) for name, preset in he.PRESETS.items()}
    crypto = he_round.crypto_path(args.repeats)
    federated = he_round.federated_round(args.federated_rounds) if args.federated_rounds else None
    body = format_results(dp, rounds, crypto, federated, description)
    print(body)
    if args.write:
        replace_section(args.write, _SECTION, body)
        print(f"\nwrote {_SECTION!r} to {args.write}")


if __name__ == "__main__":
    main()
