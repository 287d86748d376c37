"""Benchmark CKKS secure aggregation: our components against FLARE's stock ones, and an HE job against plaintext.

Two measurements, which ``benchmarks/privacy.py`` writes to the Privacy section of ``docs/benchmarks.md``:

- ``crypto_path``: one round of the crypto path in this process, per round and with the same TenSEAL context as
  FLARE 2.9's HEBuilder makes (CKKS, N=8192, moduli [60, 40, 40], scale 2**40, symmetric, relinearization keys).
  Ours: ``EncryptParams`` at each site, ``EncryptedRoundAggregator`` on the server, ``DecryptAggregate`` at a
  site. Stock: ``nvflare.app_opt.he``'s ``HEModelEncryptor``, ``HEInTimeAccumulateWeightedAggregator`` and
  ``HEModelDecryptor``, driven with FLContexts from FLARE's ``FLContextManager``. Both load their contexts from a
  temporary folder: the stock ones through FLARE's ``SecurityContentService`` with secure mode off (the files are
  not signed), ours with ``load_context``. Every message goes through FLARE's FOBS serialization, so the upload
  size is what a site sends.
- ``federated_round``: the median round wall time of ``he_fedavg_clinical`` against ``fedavg_clinical`` on a
  3-site federation provisioned with the HE builder and started on 127.0.0.1; round times come from the server's
  job log as in ``benchmarks/round_overhead.py``.

Usage: ``.venv/bin/python -m benchmarks.he_round [--rounds 3] [--repeats 5] [--write docs/benchmarks.md]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReservedKey
from nvflare.apis.fl_context import FLContext, FLContextManager
from nvflare.apis.shareable import Shareable
from nvflare.apis.utils.decomposers import flare_decomposers
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.decomposers import common_decomposers
from nvflare.app_opt.he import decomposers as he_decomposers
from nvflare.app_opt.he.intime_accumulate_model_aggregator import HEInTimeAccumulateWeightedAggregator
from nvflare.app_opt.he.model_decryptor import HEModelDecryptor
from nvflare.app_opt.he.model_encryptor import HEModelEncryptor
from nvflare.fuel.sec.security_content_service import SecurityContentService
from nvflare.fuel.utils import fobs

from app_custom.core.privacy.he import CKKS_8192, load_context
from app_custom.flare.he_aggregator import HE_META_SHAPES, EncryptedRoundAggregator, shapes_of
from app_custom.flare.he_filters import DecryptAggregate, EncryptParams
from app_custom.models.mlp import TabularMLP

SITES = {"hospital-a": 2600, "hospital-b": 2400, "hospital-c": 2874}
SITE_CONTEXT_FILE = "client_context.tenseal"
SERVER_CONTEXT_FILE = "server_context.tenseal"


def write_flare_contexts(folder: Path) -> None:
    """Write the site and server contexts as FLARE 2.9's HEBuilder makes them into ``folder``."""
    context = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=8192,
        coeff_mod_bit_sizes=[60, 40, 40],
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
    )
    context.generate_relin_keys()
    context.global_scale = 2**40
    site = context.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=True)
    server = context.serialize(save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=True)
    (folder / SITE_CONTEXT_FILE).write_bytes(site)
    (folder / SERVER_CONTEXT_FILE).write_bytes(server)


def site_models(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Return each site's params: the demo model's initial params plus small site-specific changes."""
    rng = np.random.default_rng(seed)
    state = TabularMLP(num_features=9, hidden=(64, 64), seed=0).state_dict()
    return {
        site: {key: (value.numpy() + rng.normal(0, 0.01, value.shape)).astype(np.float32) for key, value in state.items()}
        for site in SITES
    }


def plaintext_fedavg(models: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    total = sum(SITES.values())
    first = next(iter(models.values()))
    return {
        key: sum(SITES[site] * params[key].astype(np.float64) for site, params in models.items()) / total
        for key in first
    }


def max_error(result: dict[str, Any], expected: dict[str, np.ndarray]) -> float:
    return max(
        float(np.max(np.abs(np.asarray(result[key], dtype=np.float64).reshape(value.shape) - value)))
        for key, value in expected.items()
    )


def _timed(function: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def _site_context(manager: FLContextManager, site: str) -> FLContext:
    """Return a site's FLContext whose peer is the server, as a site's job process has it."""
    fl_ctx = manager.new_context()
    fl_ctx.set_prop(FLContextKey.SECURE_MODE, False, private=True, sticky=False)  # the temp files are not signed
    peer = FLContext()
    peer.set_prop(ReservedKey.IDENTITY_NAME, site, private=False, sticky=False)
    fl_ctx.set_peer_context(peer)
    return fl_ctx


def _upload(dxo: DXO, site: str) -> Shareable:
    shareable = dxo.to_shareable()
    shareable.set_header(AppConstants.CURRENT_ROUND, 0)
    shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, 0)
    return shareable


def round_ours(models: dict[str, dict[str, np.ndarray]], folder: Path) -> dict[str, float]:
    """Return times, upload bytes and error of one round with our filters and aggregator."""
    encrypt, decrypt = EncryptParams(), DecryptAggregate()
    # Our kit loader accepts only signed kit content, so the contexts are loaded from the same files directly.
    encrypt._context = decrypt._context = load_context((folder / SITE_CONTEXT_FILE).read_bytes(), CKKS_8192)
    server = EncryptedRoundAggregator(load_context((folder / SERVER_CONTEXT_FILE).read_bytes(), CKKS_8192))
    server.start_round(shapes_of(next(iter(models.values()))))
    fl_ctx = FLContext()
    uploads, encrypt_times = {}, []
    for site, params in models.items():
        dxo = DXO(DataKind.WEIGHTS, data=dict(params), meta={"num_examples": SITES[site]})
        wire, seconds = _timed(lambda: fobs.dumps(encrypt.process(dxo.to_shareable(), fl_ctx)))
        uploads[site] = wire
        encrypt_times.append(seconds)

    def aggregate() -> bytes:
        for site, wire in uploads.items():
            received = from_shareable(fobs.loads(wire))
            server.add(site, received.data, received.get_meta_prop("num_examples"), received.get_meta_prop(HE_META_SHAPES))
        return fobs.dumps(DXO(DataKind.WEIGHTS, data=server.result(), meta=server.result_meta()).to_shareable())

    download, aggregate_seconds = _timed(aggregate)
    result, decrypt_seconds = _timed(lambda: from_shareable(decrypt.process(fobs.loads(download), fl_ctx)).data)
    return _round_summary(models, uploads, encrypt_times, download, aggregate_seconds, result, decrypt_seconds)


def _round_summary(
    models: dict[str, dict[str, np.ndarray]],
    uploads: dict[str, bytes],
    encrypt_times: list[float],
    download: bytes,
    aggregate_seconds: float,
    result: dict[str, np.ndarray],
    decrypt_seconds: float,
) -> dict[str, float]:
    """Return the times, message sizes and error against plaintext FedAvg of one measured round."""
    return {
        "encrypt": statistics.median(encrypt_times),
        "aggregate": aggregate_seconds,
        "decrypt": decrypt_seconds,
        "upload_bytes": statistics.median(len(wire) for wire in uploads.values()),
        "download_bytes": len(download),
        "max_error": max_error(result, plaintext_fedavg(models)),
    }


def round_stock(models: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
    """Return times, upload bytes and error of one round with FLARE 2.9's stock HE components.

    FLARE's default pairing: each site multiplies its params by its NUM_STEPS_CURRENT_ROUND (set here to its number
    of examples) before encrypting. The server adds the ciphertexts and multiplies the sum by 1 / (sum of the
    sites' NUM_STEPS_CURRENT_ROUND), so the result is the same weighted FedAvg as ours. Weighing on the server
    instead (``weigh_by_local_iter=True`` there) needs a second ciphertext multiplication, which moduli
    [60, 40, 40] do not allow ("scale out of bounds").
    """
    encryptor = HEModelEncryptor(tenseal_context_file=SITE_CONTEXT_FILE, weigh_by_local_iter=True)
    decryptor = HEModelDecryptor(tenseal_context_file=SITE_CONTEXT_FILE)
    aggregator = HEInTimeAccumulateWeightedAggregator(expected_data_kind=DataKind.WEIGHTS, weigh_by_local_iter=False)
    server_manager = FLContextManager(identity_name="server", job_id="bench")
    server_ctx = server_manager.new_context()
    server_ctx.set_prop(AppConstants.CURRENT_ROUND, 0, private=True, sticky=False)
    aggregator.handle_event(EventType.START_RUN, server_ctx)

    uploads, encrypt_times = {}, []
    for site, params in models.items():
        site_ctx = _site_context(FLContextManager(identity_name=site, job_id="bench"), site)
        encryptor.handle_event(EventType.START_RUN, site_ctx)  # loads the context as in a job
        dxo = DXO(DataKind.WEIGHTS, data=dict(params), meta={MetaKey.NUM_STEPS_CURRENT_ROUND: SITES[site]})

        def encrypt(dxo: DXO = dxo, site_ctx: FLContext = site_ctx, site: str = site) -> bytes:
            shareable = encryptor.process(_upload(dxo, site), site_ctx)
            shareable.set_peer_props({ReservedKey.IDENTITY_NAME: site})
            return fobs.dumps(shareable)

        wire, seconds = _timed(encrypt)
        uploads[site] = wire
        encrypt_times.append(seconds)

    def aggregate() -> bytes:
        for site, wire in uploads.items():
            received = fobs.loads(wire)
            received.set_peer_props({ReservedKey.IDENTITY_NAME: site})
            if not aggregator.accept(received, server_ctx):
                raise RuntimeError(f"the stock HE aggregator rejected {site}'s contribution")
        return fobs.dumps(aggregator.aggregate(server_ctx))

    download, aggregate_seconds = _timed(aggregate)
    site_ctx = _site_context(FLContextManager(identity_name="hospital-a", job_id="bench"), "hospital-a")
    decryptor.handle_event(EventType.START_RUN, site_ctx)
    result, decrypt_seconds = _timed(lambda: from_shareable(decryptor.process(fobs.loads(download), site_ctx)).data)
    return _round_summary(models, uploads, encrypt_times, download, aggregate_seconds, result, decrypt_seconds)


def crypto_path(repeats: int) -> dict[str, dict[str, float]]:
    """Return the median of ``repeats`` rounds for ours and stock, alternating so load changes hit both."""
    flare_decomposers.register()
    common_decomposers.register()
    he_decomposers.register()
    models = site_models()
    with tempfile.TemporaryDirectory(prefix="consortia-he-bench-") as folder:
        write_flare_contexts(Path(folder))
        SecurityContentService.initialize(content_folder=folder)
        runs: dict[str, list[dict[str, float]]] = {"ours": [], "stock": []}
        for _ in range(repeats):
            runs["ours"].append(round_ours(models, Path(folder)))
            runs["stock"].append(round_stock(models))
    return {name: {key: statistics.median(run[key] for run in rounds) for key in rounds[0]} for name, rounds in runs.items()}


def federated_round(num_rounds: int) -> dict[str, Any]:
    """Run ``fedavg_clinical`` and ``he_fedavg_clinical`` twice each on one HE-provisioned 3-site federation.

    Returns:
        Per job, for each of its two runs, the wall time of each round in seconds, from the server's job log.
    """
    import yaml

    from benchmarks.round_overhead import OURS_END, OURS_START, round_times, server_log
    from consortia import federation
    from consortia.jobs import prepare_job
    from provisioning.provision import provision

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="consortia-he-round-") as scratch:
        scratch_path = Path(scratch)
        consortium = yaml.safe_load((root / "provisioning/consortium.yml").read_text())
        consortium["project"] = "consortia_he_bench"
        (scratch_path / "consortium.yml").write_text(yaml.safe_dump(consortium))
        result = provision(scratch_path / "consortium.yml", scratch_path / "ws", he=True)
        state = federation.up(result.workspace)
        times: dict[str, list[list[float]]] = {"fedavg_clinical": [], "he_fedavg_clinical": []}
        try:
            with federation.flare_session(result.workspace, state, state.lead_user) as session:
                # ABBA order, so a trend in machine load during the run affects both jobs alike.
                order = ("fedavg_clinical", "he_fedavg_clinical", "he_fedavg_clinical", "fedavg_clinical")
                for index, job in enumerate(order):
                    folder = prepare_job(job, scratch_path / f"jobs-{index}", num_rounds=num_rounds)
                    job_id = session.submit_job(str(folder))
                    session.monitor_job(job_id, timeout=900, poll_interval=1.0)
                    status = session.get_job_meta(job_id).get("status")
                    if status != "FINISHED:COMPLETED":
                        raise RuntimeError(f"benchmark job {job} ended with {status}")
                    log = server_log(session, job_id, scratch_path / "results" / str(index))
                    times[job].append(round_times(log, OURS_START, OURS_END))
        finally:
            federation.down(result.workspace)
    return {"round_times": times, "sites": len(state.sites), "rounds": num_rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="in-process rounds per implementation")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each federated job; 0 skips them")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    for name, row in crypto_path(args.repeats).items():
        print(name, row)
    if args.rounds:
        print(federated_round(args.rounds))


if __name__ == "__main__":
    main()
