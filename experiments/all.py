"""Run every accuracy experiment and rewrite ``docs/experiments.md`` with the results.

Run::

    .venv/bin/python -m experiments.all
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from dataclasses import replace
from pathlib import Path

from experiments import baselines, communication, imbalance
from experiments.reporting import Section, console, machine_description, set_single_thread

__all__ = ["render_document", "run_all"]

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "docs" / "experiments.md"
COMMAND = ".venv/bin/python -m experiments.all"

_INTRO = """\
Accuracy of the algorithms in `app_custom/core`, measured by in-process federated simulations in `experiments/`
(no FLARE: sites are loops in one process, so rounds cost only local training; the FLARE jobs call the same core
functions and are tested elsewhere). Data are real and bundled with installed packages, never downloaded:
scikit-learn's `load_digits()` (1,797 8×8 images, 10 classes), scikit-survival's `load_aids()` (1,151 patients of
the ACTG 320 trial) and `load_flchain()` (7,874 patients).

The `aids` label is `censor` (an AIDS-defining event or death, 8.3% positive); `time` is dropped. Features
(`experiments/datasets.py`, `AIDS_FEATURES`): age, log CD4 count, log months of prior zidovudine, Karnofsky score
(ordinal, kept numeric), hemophilia, female sex, CD4 stratum > 50, indinavir arm (`tx`), current and previous
intravenous drug use (one-hot against "never"), and race/ethnicity one-hot against white non-Hispanic (black,
Hispanic, Asian/Pacific Islander, American Indian). `txgrp` is left out because it repeats `tx`.

Only the abstracts of the Fed-Focal Loss and CatFedAvg papers were available. The server-side rules measured here
(`loss_weighted_aggregation_weights`, `select_by_category_coverage` in `app_custom/core/selection.py`) are our
readings of those abstracts, not the authors' algorithms, and neither paper's setup (VIRTUAL on 28×28 MNIST, its
imbalance construction, its focal-loss γ and α, its client counts) could be copied. A claim that does not reproduce
here may therefore fail because of our reading rather than because of the published method."""

_IMBALANCE_CLAIM = """\
**What the paper claims.** Fed-Focal Loss (Sarkar, Narang, Rai, FL-IJCAI 2020, arXiv 2011.06283), abstract: focal loss
at the sites plus a "tunable sampling framework" for "selective client model contributions" on the server gives "more
than 9% (absolute percentage) improvement in the unbalanced MNIST benchmark". **Our reading:** focal loss
(γ=2, no α) at each site, and server aggregation weight `n_k · L_k^β` with `L_k` the site's mean training loss of its
last local epoch (`focal_beta`), optionally keeping only the highest-loss fraction of sites (`focal_top_fraction`).
β=0 is focal loss alone; both knobs are ours."""

_COMMUNICATION_CLAIM = """\
**What the paper claims.** CatFedAvg (Sarkar, Rai, Narang, arXiv 2011.07229), abstract: sites send metadata about
their training data each round and the server requests a subset of weight updates by "category coverage
maximization", in two variants; on MNIST "an increase of 10% absolute points in accuracy … with 70% absolute points
lower network transfer over FedAvg". **Our reading:** the metadata are class histograms; `full_coverage` greedily
selects sites until every class is covered, and `budget` selects exactly k sites by the same greedy order. We do
not know whether CatFedAvg selects sites or parts of models, nor how its two variants differ. Class histograms do not
change between rounds, so when every site is a candidate the selection is the same in every round and the data of
unselected sites never reach the global model. The second table therefore also draws the candidates at random each
round (FedAvg's client sampling), which makes the selection vary."""

_BASELINES_NOTE = """\
No paper claim is tested here. The table places the federated model between the two bounds it should lie between:
training on pooled data (not allowed in a federation) and each site training alone."""


def render_document(sections: list[Section], *, seeds: tuple[int, ...], total_seconds: float) -> str:
    """Return the Markdown of ``docs/experiments.md`` for the given experiment sections."""
    today = datetime.date.today().isoformat()
    claims = {"imbalance": _IMBALANCE_CLAIM, "communication": _COMMUNICATION_CLAIM, "baselines": _BASELINES_NOTE}
    lines = [
        "# Experiments",
        "",
        _INTRO,
        "",
        (f"Command: `{COMMAND}` (each experiment alone: `.venv/bin/python -m experiments.imbalance`, "
        "`experiments.communication`, `experiments.baselines`; `--seeds N`, `--rounds N`). "
        f"Run on {today}; machine: {machine_description()}, shared with other work "
        f"(load average at the end {_load_average()}). Seeds {list(seeds)}. Total wall time {total_seconds / 60:.1f} "
        "min."),
    ]
    for section in sections:
        lines += ["", f"## {section.title}", "", (f"Wall time {section.wall_seconds / 60:.1f} min. "
                  f"Command: `.venv/bin/python -m experiments.{section.key}`."), "",
                  claims[section.key], "", section.markdown]
    return "\n".join(lines) + "\n"


def run_all(seeds: tuple[int, ...], *, show_progress: bool = True, smoke: bool = False) -> list[Section]:
    """Run the three experiments with their default settings (or smoke settings) for ``seeds``."""
    imbalance_settings = imbalance.ImbalanceSettings.smoke() if smoke else imbalance.ImbalanceSettings()
    communication_settings = (
        communication.CommunicationSettings.smoke() if smoke else communication.CommunicationSettings()
    )
    baseline_settings = baselines.BaselineSettings.smoke() if smoke else baselines.BaselineSettings()
    settings = (
        (imbalance, imbalance_settings),
        (communication, communication_settings),
        (baselines, baseline_settings),
    )
    sections = []
    for module, module_settings in settings:
        sections.append(module.run(replace(module_settings, seeds=seeds), show_progress=show_progress))
        console.log(f"{module.__name__} finished in {sections[-1].wall_seconds / 60:.1f} min")
    return sections


def _load_average() -> str:
    try:
        return " ".join(f"{value:.1f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def main() -> None:
    """Parse arguments, run every experiment and write the document."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...) per setting; default 3")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="Markdown file to write")
    parser.add_argument("--smoke", action="store_true", help="tiny settings (1-2 rounds) to check that it runs")
    parser.add_argument("--quiet", action="store_true", help="hide the progress bars")
    arguments = parser.parse_args()
    set_single_thread()
    seeds = tuple(range(arguments.seeds))
    started = time.perf_counter()
    sections = run_all(seeds, show_progress=not arguments.quiet, smoke=arguments.smoke)
    document = render_document(sections, seeds=seeds, total_seconds=time.perf_counter() - started)
    arguments.output.write_text(document, encoding="utf-8")
    console.log(f"wrote {arguments.output}")


if __name__ == "__main__":
    main()
