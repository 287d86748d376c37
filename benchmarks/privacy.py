"""Benchmark the privacy mechanisms on the demo-sized model: DP-SGD step time and one CKKS aggregation round.

Model: the demo's ``TabularMLP`` with 9 inputs (the flchain feature count), two hidden layers of 64 and one logit
(4,865 float32 params in 6 tensors). Data: random standard-normal features with 27.5 % positive labels, one site's
share of flchain (2,600 rows); timings do not depend on the values.

- DP-SGD: time per optimizer step of ``dp_sgd.make_private`` + ``train_private_epoch`` (Poisson sampling, expected
  batch 64, per-sample clipping, noise, accounting) against plain SGD with a shuffled batch-64 loader. Data
  loading is inside the timed epochs for both. The one-off noise calibration is reported separately.
- HE: one round of ``he.encrypt_params`` at 3 sites, ``he.aggregate_encrypted`` on the server and
  ``he.decrypt_params`` at a site, against the plaintext weighted FedAvg of the same params. Upload size is the
  serialized ciphertexts of one site against its params as raw float32.

Each measurement is the median over repeats. Usage::

    .venv/bin/python benchmarks/privacy.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import os
import platform
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app_custom.core.privacy import he  # noqa: E402
from app_custom.core.privacy.dp_sgd import DPSGDConfig, make_private, train_private_epoch  # noqa: E402
from app_custom.models.mlp import TabularMLP  # noqa: E402

_SECTION = "## Privacy"
_NUM_FEATURES = 9
_NUM_ROWS = 2600
_BATCH_SIZE = 64
_SITE_WEIGHTS = (2600.0, 2400.0, 2874.0)


def _dataset(seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(_NUM_ROWS, _NUM_FEATURES, generator=generator)
    labels = (torch.rand(_NUM_ROWS, generator=generator) < 0.275).float()
    return TensorDataset(features, labels)


def _model() -> nn.Module:
    return TabularMLP(num_features=_NUM_FEATURES, hidden=(64, 64), dropout=0.1, seed=0)


def _time_epochs(run_epoch: Callable[[], int], epochs: int) -> float:
    """Return the median seconds per step over ``epochs`` epochs; ``run_epoch`` returns its step count."""
    per_step = []
    for _ in range(epochs):
        start = time.perf_counter()
        steps = run_epoch()
        per_step.append((time.perf_counter() - start) / steps)
    return statistics.median(per_step)


def bench_dp_sgd(epochs: int) -> dict[str, float]:
    """Return seconds per step with and without DP-SGD, calibration seconds and the epsilon reached."""
    dataset = _dataset()
    loss_fn = nn.functional.binary_cross_entropy_with_logits

    plain_model = _model()
    plain_optimizer = torch.optim.SGD(plain_model.parameters(), lr=0.05)
    plain_loader = DataLoader(dataset, batch_size=_BATCH_SIZE, shuffle=True)

    def plain_epoch() -> int:
        steps = 0
        for inputs, targets in plain_loader:
            plain_optimizer.zero_grad()
            loss_fn(plain_model(inputs), targets).backward()
            plain_optimizer.step()
            steps += 1
        return steps

    private_model = _model()
    config = DPSGDConfig(
        target_epsilon=3.0, target_delta=1e-5, max_grad_norm=1.0, epochs=epochs + 1, batch_size=_BATCH_SIZE
    )
    start = time.perf_counter()
    training = make_private(
        private_model,
        torch.optim.SGD(private_model.parameters(), lr=0.05),
        DataLoader(dataset, batch_size=_BATCH_SIZE),
        config,
    )
    calibration_seconds = time.perf_counter() - start

    def private_epoch() -> int:
        return train_private_epoch(training, loss_fn).num_steps

    plain_epoch()  # warm-up
    private_epoch()
    return {
        "plain_step": _time_epochs(plain_epoch, epochs),
        "private_step": _time_epochs(private_epoch, epochs),
        "make_private": calibration_seconds,
        "noise_multiplier": training.noise_multiplier,
        "epsilon": training.epsilon(),
        "steps": training.steps_taken,
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


def format_results(dp: dict[str, float], rounds: dict[str, dict[str, float]], description: str) -> str:
    """Return the markdown body of the Privacy section."""
    today = datetime.date.today().isoformat()
    lines = [
        f"Measured by `benchmarks/privacy.py` on {today}. Machine: {description}.",
        "",
        f"Model: `TabularMLP(num_features={_NUM_FEATURES}, hidden=(64, 64))`, {rounds['ckks_8192']['params']:,.0f} "
        f"float32 params in 6 tensors; one site has {_NUM_ROWS:,} rows (random values). Times are medians. "
        "Command: `.venv/bin/python benchmarks/privacy.py --write docs/benchmarks.md`.",
        "",
        "### DP-SGD step (Opacus, RDP accountant)",
        "",
        "| training | ms per step | ratio to plain |",
        "|---|---|---|",
        f"| plain SGD, batch {_BATCH_SIZE} | {dp['plain_step'] * 1e3:.2f} | 1.0 |",
        f"| DP-SGD, expected batch {_BATCH_SIZE} (Poisson) | {dp['private_step'] * 1e3:.2f} "
        f"| {dp['private_step'] / dp['plain_step']:.1f} |",
        "",
        f"`make_private` with noise calibration took {dp['make_private']:.2f} s once per job "
        f"(noise_multiplier {dp['noise_multiplier']:.3f} for epsilon 3 at delta 1e-5 over {dp['steps']:.0f} steps; "
        f"epsilon reached {dp['epsilon']:.3f}).",
        "",
        "The DP-SGD step includes Poisson sampling, per-sample gradients, clipping, noise and the accountant update. "
        "Other processes share these CPUs, so times of the same case varied by up to 1.5x between runs.",
        "",
        "### CKKS aggregation round, 3 sites",
        "",
        "| preset | encrypt per site (ms) | aggregate 3 (ms) | decrypt (ms) | round (ms) | plaintext FedAvg (ms) "
        "| round / plaintext | ciphertexts per site | upload per site (KiB) | float32 (KiB) | size ratio "
        "| max abs error of the mean |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rounds.items():
        lines.append(
            f"| {name} | {row['encrypt'] * 1e3:.1f} | {row['aggregate'] * 1e3:.1f} | {row['decrypt'] * 1e3:.1f} "
            f"| {row['round'] * 1e3:.1f} | {row['plaintext'] * 1e3:.3f} | {row['round'] / row['plaintext']:,.0f} "
            f"| {row['ciphertexts']:.0f} | {row['upload_bytes'] / 1024:,.0f} | {row['plain_bytes'] / 1024:.1f} "
            f"| {row['upload_bytes'] / row['plain_bytes']:,.0f} | {row['max_error']:.1e} |"
        )
    first = rounds["ckks_8192"]
    lines += [
        "",
        "The round is encrypt at one site + aggregate + decrypt at one site; sites encrypt in parallel, so three "
        "encryptions add no wall time. Context generation is one-off per consortium "
        f"({first['context'] * 1e3:.0f} ms for ckks_8192). The public context the server holds is "
        f"{first['public_context_bytes'] / 1024:,.0f} KiB, the secret context for sites "
        f"{first['secret_context_bytes'] / 1024:,.0f} KiB.",
        "",
        f"Each tensor starts its own ciphertext, so this model's {first['params']:,.0f} params fill "
        f"{first['ciphertexts']:.0f} ciphertexts at ckks_8192, where packing all tensors into one vector would need "
        f"{math.ceil(first['params'] / he.CKKS_8192.slots)}. Upload size grows with the ciphertext count.",
    ]
    return "\n".join(lines)


def write_section(path: Path, body: str) -> None:
    """Replace the Privacy section of ``path`` (or append it), leaving the other sections as they are."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{_SECTION}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(_SECTION)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per training mode")
    parser.add_argument("--repeats", type=int, default=5, help="timed HE rounds per preset")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads; the model is too small to gain")
    parser.add_argument("--write", type=Path, help="markdown file whose '## Privacy' section gets the results")
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(args.threads)
    description = machine_description()

    dp = bench_dp_sgd(args.epochs)
    rounds = {name: bench_he(preset, args.repeats) for name, preset in he.PRESETS.items()}
    body = format_results(dp, rounds, description)
    print(body)
    if args.write:
        write_section(args.write, body)
        print(f"\nwrote {_SECTION!r} to {args.write}")


if __name__ == "__main__":
    main()
