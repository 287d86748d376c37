"""Benchmark weighted FedAvg on the server: time and peak memory against the machine's memory bandwidth.

Compares, for N site updates of P float32 parameters:

- ``consortia``: ``app_custom.core.aggregation.WeightedFedAvg`` (streaming weighted sum) with its default of one
  torch thread, and ``consortia (2 threads)`` with two;
- ``nvflare``: ``nvflare.app_common.aggregators.weighted_aggregation_helper.WeightedAggregationHelper`` fed numpy
  arrays, and the same helper fed torch tensors (its in-place ``add_`` path);
- ``flower``: ``flwr.server.strategy.aggregate.aggregate``, when ``flwr`` can be imported;
- ``numpy add``: ``np.add(sum, update, out=sum)`` over the same updates, the least memory traffic any streaming
  aggregate can have (read each update, read and write one accumulator). Its time is the bandwidth limit of one
  thread, because numpy runs it on one thread; ``consortia`` also runs on one thread, so the two compare like for like.

Every result is compared with the weighted mean computed in float64, and for ``consortia`` the error is set against
the bound that ``WeightedFedAvg`` documents, ``(N + 3) * 2**-24 * max over elements of sum_k w_k |x_k| / sum_k w_k``.

Updates come from a generator over a fixed 256 MiB pool of random arrays, larger than common L3 caches, so memory use
does not grow with N and updates are read from main memory. Repeats run round-robin over the implementations and the
minimum time is kept. Peak memory comes from ``tracemalloc`` in one extra run. It counts only allocations made while
aggregating: the update pool is left out, but Flower's list of all N updates is counted because its API needs them
at once.

Usage::

    .venv/bin/python benchmarks/aggregation.py --write docs/benchmarks.md
    .venv/bin/python benchmarks/aggregation.py --sizes 1000000 --sites 10,50 --repeats 2

Flower pins versions of fastapi, protobuf and other packages that differ from ours, so install it into its own
folder and pass that folder with ``--flwr-path`` (it is appended to ``sys.path``, so our packages still win)::

    .venv/bin/pip install --target /tmp/flwr-bench flwr
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import re
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app_custom.core.aggregation import WeightedFedAvg
from benchmarks._markdown import replace_section

Params = dict[str, np.ndarray]
Aggregate = Callable[[Iterator[tuple[Params, float]]], object]

_LAYERS = 8
_POOL_BYTES = 256 * 2**20
_SECTION = "## Aggregation"


@dataclass
class Case:
    """One (implementation, N, P) measurement."""

    name: str
    sites: int
    size: int
    seconds: float | None = None
    peak_bytes: int | None = None
    max_abs_error: float | None = None
    error_bound: float | None = None
    note: str = ""


class UpdatePool:
    """Fixed pool of random models; ``updates(n)`` yields n ``(params, num_examples)`` pairs that reuse it."""

    def __init__(self, size: int, seed: int = 0) -> None:
        count = max(2, _POOL_BYTES // (4 * size))
        rng = np.random.default_rng(seed)
        self.models = [self._split(rng.standard_normal(size, dtype=np.float32)) for _ in range(count)]

    @staticmethod
    def _split(flat: np.ndarray) -> Params:
        return {f"layer{index}": part for index, part in enumerate(np.array_split(flat, _LAYERS))}

    def updates(self, sites: int) -> Iterator[tuple[Params, float]]:
        for site in range(sites):
            yield self.models[site % len(self.models)], float(100 + (site * 37) % 900)


def run_numpy_add(updates: Iterator[tuple[Params, float]]) -> Params:
    total: Params | None = None
    for params, _ in updates:
        if total is None:
            total = {key: np.zeros_like(value) for key, value in params.items()}
        for key, value in params.items():
            np.add(total[key], value, out=total[key])
    assert total is not None
    return total


def run_consortia(updates: Iterator[tuple[Params, float]], num_threads: int = 1) -> Params:
    aggregator = WeightedFedAvg(num_threads=num_threads)
    for params, num_examples in updates:
        aggregator.add(params, num_examples)
    # As on the server, the sum itself is returned: `numpy add` returns its sum without a copy too.
    return aggregator.result(copy=False)


def run_consortia_two_threads(updates: Iterator[tuple[Params, float]]) -> Params:
    return run_consortia(updates, num_threads=2)


def run_nvflare(updates: Iterator[tuple[Params, float]]) -> Params:
    from nvflare.app_common.aggregators.weighted_aggregation_helper import WeightedAggregationHelper

    helper = WeightedAggregationHelper()
    for site, (params, num_examples) in enumerate(updates):
        helper.add(params, num_examples, f"site-{site}", 0)
    return helper.get_result()


def run_nvflare_torch(updates: Iterator[tuple[Params, float]]) -> Params:
    import torch
    from nvflare.app_common.aggregators.weighted_aggregation_helper import WeightedAggregationHelper

    helper = WeightedAggregationHelper()
    for site, (params, num_examples) in enumerate(updates):
        tensors = {key: torch.from_numpy(value) for key, value in params.items()}
        helper.add(tensors, num_examples, f"site-{site}", 0)
    return {key: value.numpy() for key, value in helper.get_result().items()}


def make_flower(flwr_path: str | None) -> tuple[Aggregate | None, str]:
    """Return Flower's aggregate wrapped for our updates, or None and the reason it is unavailable."""
    if flwr_path:
        sys.path.append(flwr_path)
    try:
        import flwr
        from flwr.server.strategy.aggregate import aggregate
    except ImportError as error:
        return None, f"flwr not importable ({error}); install it with `pip install -e .[bench]` or see --flwr-path"

    def run_flower(updates: Iterator[tuple[Params, float]]) -> Params:
        keys: list[str] = []
        results = []
        # Flower takes every update at once, as deserialised copies; building them is not timed.
        for params, num_examples in updates:
            keys = list(params)
            results.append(([value.copy() for value in params.values()], int(num_examples)))
        start = time.perf_counter()
        layers = aggregate(results)
        run_flower.seconds = time.perf_counter() - start  # type: ignore[attr-defined]
        return dict(zip(keys, layers))

    return run_flower, f"flwr {getattr(flwr, '__version__', '?')}"


def time_once(run: Aggregate, pool: UpdatePool, sites: int) -> float:
    """Return the seconds one aggregation of ``sites`` updates takes (for Flower, only its ``aggregate()`` call)."""
    gc.collect()
    start = time.perf_counter()
    run(pool.updates(sites))
    elapsed = time.perf_counter() - start
    return float(getattr(run, "seconds", elapsed))


def trace_once(run: Aggregate, pool: UpdatePool, sites: int) -> tuple[int, object]:
    """Return the peak memory that ``tracemalloc`` records during one aggregation, and its result."""
    gc.collect()
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    result = run(pool.updates(sites))
    peak = tracemalloc.get_traced_memory()[1] - baseline
    tracemalloc.stop()
    return peak, result


def max_difference(result: Params, reference: Params) -> float:
    return max(float(np.max(np.abs(result[key].astype(np.float64) - reference[key]))) for key in reference)


def float64_reference(pool: UpdatePool, sites: int) -> tuple[Params, float]:
    """Return the weighted mean computed in float64 and the float32 error bound documented by ``WeightedFedAvg``."""
    total: Params = {}
    magnitude: Params = {}
    total_weight = 0.0
    for params, num_examples in pool.updates(sites):
        total_weight += num_examples
        for key, value in params.items():
            wide = value.astype(np.float64)
            total.setdefault(key, np.zeros_like(wide))
            magnitude.setdefault(key, np.zeros_like(wide))
            total[key] += num_examples * wide
            np.abs(wide, out=wide)
            magnitude[key] += num_examples * wide
    largest = max(float(np.max(value)) for value in magnitude.values()) / total_weight
    bound = (sites + 3) * 2.0**-24 * largest
    return {key: value / total_weight for key, value in total.items()}, bound


def machine_description(flower_status: str) -> str:
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
    import nvflare
    import torch

    load = ", load average at start {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()) if hasattr(os, "getloadavg") else ""
    return (
        f"{model}, {os.cpu_count()} CPUs{memory}{load}; Python {platform.python_version()}, numpy {np.__version__}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), nvflare {nvflare.__version__}, {flower_status}"
    )


def format_table(cases: list[Case]) -> str:
    limit = {(case.sites, case.size): case.seconds for case in cases if case.name == "numpy add"}
    lines = [
        ("| P | N | implementation | time (s) | fraction of bandwidth limit | GB/s moved | peak memory (MiB) "
        "| max abs error vs float64 |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        if case.seconds is None:
            lines.append(f"| {case.size:,} | {case.sites} | {case.name} | skipped: {case.note} | | | | |")
            continue
        reference = limit.get((case.sites, case.size))
        fraction = f"{reference / case.seconds:.2f}" if reference else ""
        moved = 3 * 4 * case.sites * case.size / case.seconds / 1e9
        memory = f"{case.peak_bytes / 2**20:.1f}" if case.peak_bytes is not None else case.note
        difference = f"{case.max_abs_error:.1e}" if case.max_abs_error is not None else ""
        lines.append(
            f"| {case.size:,} | {case.sites} | {case.name} | {case.seconds:.3f} | {fraction} | {moved:.1f} "
            f"| {memory} | {difference} |"
        )
    return "\n".join(lines)


def summarize(cases: list[Case], target: float) -> str:
    """Return sentences on how close ``consortia`` came to the bandwidth limit and how its memory grew with N."""
    limit = {(case.sites, case.size): case.seconds for case in cases if case.name == "numpy add"}
    ours = [case for case in cases if case.name == "consortia" and case.seconds and limit.get((case.sites, case.size))]
    if not ours:
        return "No consortia case ran."
    fractions = [limit[(case.sites, case.size)] / case.seconds for case in ours]  # type: ignore[operator]
    met = [case for case, fraction in zip(ours, fractions) if fraction >= target]
    missed = [f"P = {case.size:,}, N = {case.sites}" for case in ours if case not in met]
    lines = [
        (f"consortia (one thread) reached {min(fractions):.2f} to {max(fractions):.2f} of the bandwidth limit "
        f"(median {float(np.median(fractions)):.2f}); {len(met)} of {len(fractions)} cases met the target of "
        f"{target}{' (missed: ' + '; '.join(missed) + ')' if missed else ''}.")
    ]
    two = {(case.sites, case.size): case.seconds for case in cases if case.name == "consortia (2 threads)"}
    ratios = [two[(case.sites, case.size)] / case.seconds for case in ours if two.get((case.sites, case.size))]
    if ratios:
        lines.append(
            f"With two torch threads it took {min(ratios):.2f} to {max(ratios):.2f} times as long as with one "
            f"(median {float(np.median(ratios)):.2f})."
        )
    errors = [(case.max_abs_error, case.error_bound) for case in ours if case.error_bound is not None]
    if errors:
        worst = max(error / bound for error, bound in errors if error is not None)
        lines.append(
            f"Its largest error against the float64 weighted mean was {worst:.3f} of the documented float32 bound "
            f"(bounds {min(bound for _, bound in errors):.1e} to {max(bound for _, bound in errors):.1e})."
        )
    for size in sorted({case.size for case in ours}):
        peaks = [case.peak_bytes / 2**20 for case in ours if case.size == size and case.peak_bytes is not None]
        if peaks:
            lines.append(
                f"At P = {size:,} its peak memory stayed between {min(peaks):.1f} and {max(peaks):.1f} MiB for "
                f"every N; the float32 sum it returns is {4 * size / 2**20:.1f} MiB."
            )
    return " ".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000000,10000000", help="comma-separated P, parameters per model")
    parser.add_argument("--sites", default="10,50,100", help="comma-separated N, site updates per round")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case; the minimum is reported")
    parser.add_argument("--flwr-path", help="folder with a separate Flower install, appended to sys.path")
    parser.add_argument("--flower-max-gib", type=float, default=3.0, help="skip Flower cases needing more GiB")
    parser.add_argument("--time-budget", type=float, default=270.0, help="seconds; later cases are skipped past it")
    parser.add_argument("--write", type=Path, help="markdown file whose '## Aggregation' section gets the results")
    args = parser.parse_args()

    started = time.perf_counter()
    flower, flower_status = make_flower(args.flwr_path)
    if flower is None:
        print(f"Flower skipped: {flower_status}")
    implementations: list[tuple[str, Aggregate | None]] = [
        ("numpy add", run_numpy_add),
        ("consortia", run_consortia),
        ("consortia (2 threads)", run_consortia_two_threads),
        ("nvflare (numpy)", run_nvflare),
        ("nvflare (torch)", run_nvflare_torch),
        ("flower", flower),
    ]
    description = machine_description(flower_status)
    print(description)

    cases: list[Case] = []
    for size in (int(float(value)) for value in args.sizes.split(",")):
        pool = UpdatePool(size)
        for sites in (int(value) for value in args.sites.split(",")):
            runnable: list[tuple[Case, Aggregate]] = []
            for name, run in implementations:
                case = Case(name, sites, size)
                cases.append(case)
                if run is None:
                    case.note = "flwr not installed"
                elif time.perf_counter() - started > args.time_budget:
                    case.note = f"time budget of {args.time_budget:.0f} s spent"
                elif name == "flower" and 2 * 4 * sites * size / 2**30 > args.flower_max_gib:
                    case.note = f"needs about {2 * 4 * sites * size / 2**30:.1f} GiB (limit --flower-max-gib)"
                else:
                    runnable.append((case, run))

            # Repeats go round-robin over the implementations, so a change in machine load hits all of them.
            times: dict[str, list[float]] = {case.name: [] for case, _ in runnable}
            for _ in range(args.repeats):
                for case, run in runnable:
                    times[case.name].append(time_once(run, pool, sites))

            reference, bound = float64_reference(pool, sites)
            for case, run in runnable:
                case.seconds = min(times[case.name])
                case.peak_bytes, result = trace_once(run, pool, sites)
                if "torch" in case.name:
                    case.peak_bytes, case.note = None, "not traced (torch)"
                if case.name != "numpy add":
                    case.max_abs_error = max_difference(result, reference)  # type: ignore[arg-type]
                if case.name == "consortia":
                    case.error_bound = bound
                print(f"P={size:>11,} N={sites:>4} {case.name:<16} {case.seconds:8.3f} s  "
                      f"(runs: {', '.join(f'{value:.3f}' for value in times[case.name])})", flush=True)
        del pool
        gc.collect()

    table = format_table(cases)
    print(table)
    if args.write:
        flower_ran = any(case.name == "flower" and case.seconds is not None for case in cases)
        flower_note = (
            " Flower keeps all N updates and N weighted copies at once, so its memory grows with N."
            if flower_ran
            else ""
        )
        body = (
            f"Weighted FedAvg of N site updates of P float32 parameters (8 layers), measured by "
            f"`benchmarks/aggregation.py` on {time.strftime('%Y-%m-%d')}.\n\n"
            f"Machine: {description}.\n\n"
            f"Time is the minimum of {args.repeats} runs, taken round-robin over the implementations. "
            "*Fraction of bandwidth limit* is the time of `numpy add` (an "
            "unweighted in-place sum on one thread, the least memory traffic a streaming aggregate can have) divided "
            "by the implementation's time. `consortia` folds each update with torch's fused `add_(x, alpha=w)` on one "
            "thread, so it compares like for like with `numpy add`; `consortia (2 threads)` is the same code with two "
            "torch threads, and `nvflare (torch)` runs with torch's default thread count shown above. "
            "*Max abs error* is measured against the weighted mean computed in float64. *GB/s moved* assumes 12 "
            "bytes per parameter per update (read the update, read and write a float32 accumulator). Peak memory "
            "is what `tracemalloc` saw allocated during the aggregation, without the pool the updates come from.\n\n"
            f"{table}\n\n"
            f"{summarize(cases, target=0.8)}{flower_note} When other processes share the CPUs, times of the same "
            "case can differ by 2x or more between runs; the script prints every run, and the load average above "
            "shows how busy the machine was.\n"
        )
        replace_section(args.write, _SECTION, body)
        print(f"wrote the Aggregation section of {args.write}")


if __name__ == "__main__":
    main()
