"""Site training script for tabular binary outcomes, run by FLARE's Client API inside the site's job process.

For every task the site receives the current global model. It first evaluates that model on its own held-out
split (the ``global_*`` metrics, which the server averages into the global curve), then, for a training task,
trains locally and sends back the new parameters with ``num_examples`` (the FedAvg aggregation weight) and the
local model's held-out metrics (``local_*``). For an evaluation task it sends the metrics only.

Only the folder passed as ``--data-dir`` is read; the executor that starts this script fills it from the site's
own ``local/consortia_site.json``, never from the job.

With ``--dp-epsilon`` the site trains with sample-level DP-SGD (``app_custom.flare.dp_site``): the noise is
calibrated so the whole job spends at most that epsilon, each round is charged to the site's privacy ledger before
it trains, and the result reports ``dp_epsilon``, ``dp_delta`` and ``dp_noise_multiplier``. A round that the site's
budget does not allow is refused: the result carries no params and ``meta["refused"]`` with the reason.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import nvflare.client as flare
import torch
from nvflare.app_common.abstract.fl_model import FLModel

from app_custom.core.losses import FocalLoss
from app_custom.core.privacy.dp_sgd import DEFAULT_GRAD_SAMPLE_MODE, GRAD_SAMPLE_MODES
from app_custom.core.privacy.errors import InvalidPrivacySetting
from app_custom.data.tabular import DataError, load_site_data
from app_custom.flare.dp_site import RoundRefused, SiteDPSGD, SiteDPSGDRunner
from app_custom.models.mlp import TabularMLP
from app_custom.site.training import LocalTrainingConfig, evaluate, load_numpy_params, train_local

logger = logging.getLogger(__name__)

DEFAULT_DP_DELTA = 1e-5
DEFAULT_DP_CLIP = 1.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", required=True, help="the site's own data folder")
    parser.add_argument("--local-epochs", type=int, default=2, help="local epochs per round")
    parser.add_argument("--batch-size", type=int, default=64, help="mini-batch size")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--fedprox-mu", type=float, default=0.0, help="FedProx proximal weight (0 = FedAvg)")
    parser.add_argument("--hidden", type=str, default="32,16", help="hidden layer widths, comma separated")
    parser.add_argument("--seed", type=int, default=0, help="seed of local shuffling")
    parser.add_argument("--loss", choices=("bce", "focal"), default="bce", help="training loss")
    parser.add_argument("--focal-gamma", type=float, default=2.0, help="focal loss focusing parameter (>= 0)")
    parser.add_argument("--focal-alpha", type=float, default=None, help="focal loss weight of the positive class")
    parser.add_argument("--site-root", default=None, help="the site's kit folder (set by the site, holds its budget)")
    parser.add_argument("--dp-epsilon", type=float, default=None, help="DP-SGD: target epsilon for the whole job")
    parser.add_argument("--dp-delta", type=float, default=None, help=f"DP-SGD: delta (default {DEFAULT_DP_DELTA:g})")
    parser.add_argument(
        "--dp-max-grad-norm", type=float, default=None, help=f"DP-SGD: per-sample L2 clip norm (default {DEFAULT_DP_CLIP:g})"
    )
    parser.add_argument(
        "--dp-grad-sample-mode",
        choices=GRAD_SAMPLE_MODES,
        default=None,
        help=f"DP-SGD: how per-sample gradients are clipped (default {DEFAULT_GRAD_SAMPLE_MODE}: fast_linear for "
        "models with only nn.Linear parameters, else Opacus' ew); use hooks for layers ew does not support",
    )
    return parser.parse_args(argv)


def dp_settings(args: argparse.Namespace) -> SiteDPSGD | None:
    """Return the validated DP-SGD settings, or None when ``--dp-epsilon`` is not set.

    Privacy: a DP flag without ``--dp-epsilon``, DP together with FedProx, a missing ``--site-root`` or an invalid
    value raises ``InvalidPrivacySetting`` before the site receives a model, so a misconfigured job never trains
    without the noise it asked for.
    """
    if args.dp_epsilon is None:
        if args.dp_delta is not None or args.dp_max_grad_norm is not None or args.dp_grad_sample_mode is not None:
            raise InvalidPrivacySetting(
                "--dp-delta, --dp-max-grad-norm or --dp-grad-sample-mode is set without --dp-epsilon, so DP-SGD "
                "would be off. "
                "Set --dp-epsilon to the job's target epsilon, or remove the other DP flags."
            )
        return None
    if args.fedprox_mu != 0.0:
        raise InvalidPrivacySetting(
            f"--fedprox-mu={args.fedprox_mu} cannot be combined with DP-SGD: the proximal term is not part of the "
            "per-sample gradients the noise is calibrated for. Set --fedprox-mu 0."
        )
    if not args.site_root:
        raise InvalidPrivacySetting(
            "DP-SGD needs --site-root, the site's kit folder holding its privacy budget; run the script through "
            "the site's SiteTrainer, which sets it."
        )
    return SiteDPSGD(
        epsilon=args.dp_epsilon,
        delta=DEFAULT_DP_DELTA if args.dp_delta is None else args.dp_delta,
        max_grad_norm=DEFAULT_DP_CLIP if args.dp_max_grad_norm is None else args.dp_max_grad_norm,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        local_epochs=args.local_epochs,
        site_root=Path(args.site_root),
        grad_sample_mode=args.dp_grad_sample_mode or DEFAULT_GRAD_SAMPLE_MODE,
    )


def prefixed(prefix: str, metrics: dict[str, float | None]) -> dict[str, float | None]:
    return {f"{prefix}_{key}": value for key, value in metrics.items()}


def make_loss(args: argparse.Namespace) -> torch.nn.Module:
    """Return the training loss; invalid focal settings raise before any training."""
    if args.loss == "focal":
        return FocalLoss(alpha=args.focal_alpha, gamma=args.focal_gamma)
    return torch.nn.BCEWithLogitsLoss()


def class_counts(labels: np.ndarray) -> list[int]:
    """Return the number of training rows per class (0, 1), the metadata CatFedAvg selects sites by."""
    return np.bincount(labels.astype(int), minlength=2).tolist()


def refuse_every_task(site: str, code: str, reason: str) -> None:
    """Reply to every task with a refusal, so the server records why this site cannot take part."""
    logger.error("site %s cannot train: %s", site, reason)
    while flare.is_running():
        if flare.receive() is None:
            break
        flare.send(FLModel(metrics={}, meta={"refused": code, "reason": reason}))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    loss_fn = make_loss(args)
    dp = dp_settings(args)
    flare.init()
    site = flare.get_site_name()
    dp_runner = SiteDPSGDRunner(dp, job_id=flare.get_job_id()) if dp is not None else None
    try:
        data = load_site_data(args.data_dir)
    except DataError as exc:
        refuse_every_task(site, "site_data_invalid", str(exc))
        return
    hidden = tuple(int(width) for width in args.hidden.split(",") if width)
    model = TabularMLP(num_features=data.num_features, hidden=hidden)
    logger.info("site %s loaded %d training and %d held-out rows", site, len(data.y_train), len(data.y_test))

    while flare.is_running():
        input_model = flare.receive()
        if input_model is None:
            break
        current_round = input_model.current_round or 0
        load_numpy_params(model, input_model.params)
        metrics = prefixed("global", evaluate(model, data.x_test, data.y_test))
        metrics["num_test_examples"] = float(len(data.y_test))
        if flare.is_evaluate():
            meta = {"num_examples": len(data.y_train), "class_counts": class_counts(data.y_train)}
            flare.send(FLModel(metrics=metrics, meta=meta))
            continue

        if dp_runner is None:
            config = LocalTrainingConfig(
                local_epochs=args.local_epochs,
                batch_size=args.batch_size,
                learning_rate=args.learning_rate,
                fedprox_mu=args.fedprox_mu,
                seed=args.seed + 1000 * current_round,
            )
            global_params = {k: v.detach().clone() for k, v in model.state_dict().items()}
            outcome = train_local(model, data.x_train, data.y_train, config, loss_fn=loss_fn, global_params=global_params)
        else:
            try:
                outcome, dp_metrics = dp_runner.train_round(
                    model, data.x_train, data.y_train, total_rounds=input_model.total_rounds, loss_fn=loss_fn
                )
            except RoundRefused as refusal:
                logger.warning("site %s refused round %d: %s", site, current_round, refusal.reason)
                meta = {"refused": refusal.code, "reason": refusal.reason, "num_examples": len(data.y_train)}
                flare.send(FLModel(metrics=metrics, meta=meta))
                continue
            metrics.update(dp_metrics)
        metrics.update(prefixed("local", evaluate(model, data.x_test, data.y_test)))
        metrics["local_train_loss"] = outcome.mean_loss
        output = FLModel(
            params={k: v.detach().cpu() for k, v in model.state_dict().items()},
            metrics=metrics,
            meta={"NUM_STEPS_CURRENT_ROUND": outcome.num_steps, "num_examples": len(data.y_train)},
        )
        flare.send(output)
        logger.info("site %s finished round %d with %d steps", site, current_round, outcome.num_steps)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
