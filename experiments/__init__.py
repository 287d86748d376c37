"""Reproducible accuracy experiments: in-process federated simulations on the learning core, without FLARE.

Each module runs with one command and prints its tables; ``python -m experiments.all`` runs every experiment and
rewrites ``docs/experiments.md``:

- ``experiments.imbalance``: FedAvg with cross-entropy against Fed-Focal Loss on ``aids`` and ``digits``;
- ``experiments.communication``: CatFedAvg against FedAvg on label-skewed ``digits``, accuracy against bytes uploaded;
- ``experiments.baselines``: centralized, federated and local-only training on ``flchain`` and ``digits``.
"""
