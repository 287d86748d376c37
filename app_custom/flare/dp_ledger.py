"""A site's privacy budget and its ledger of epsilon spent per job, kept in the site's own kit.

The budget comes from the site's ``local/consortia_site.json`` (key ``privacy_budget``, written by provisioning),
never from a job. The ledger is ``privacy-ledger.json`` in the site's kit folder::

    {"version": 1, "jobs": [{"job_id": "...", "epsilon": 1.9, "delta": 1e-05, "mechanism": "dp-sgd",
                             "updated_at": "2026-12-04T20:00:00+00:00"}]}

A round is charged before it trains: ``PrivacyLedger.charge`` checks the budget
(``PrivacyBudget.check_can_train``) and writes the job's cumulative epsilon after the round, under an exclusive
file lock and with an atomic replace. A round that then fails leaves the ledger over-counted, never under-counted.

This module has no FLARE import; the site training script calls it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app_custom.core.privacy.budget import JobSpend, PrivacyBudget
from app_custom.core.privacy.errors import InvalidPrivacyInput, InvalidPrivacySetting

__all__ = ["LEDGER_FILE", "SITE_CONFIG_FILE", "PrivacyLedger", "load_site_budget"]

logger = logging.getLogger(__name__)

SITE_CONFIG_FILE = "consortia_site.json"
LEDGER_FILE = "privacy-ledger.json"
LEDGER_VERSION = 1


def load_site_budget(site_root: str | Path) -> PrivacyBudget:
    """Read the site's privacy budget from ``<site_root>/local/consortia_site.json``.

    Privacy: the budget is the data owner's limit, so it is read from the site's kit only. A missing file, a
    missing ``privacy_budget`` key or an invalid value raises, so a differentially private job never trains
    without a budget.

    Raises:
        InvalidPrivacySetting: The file or key is missing, or the budget is invalid.
    """
    config_file = Path(site_root) / "local" / SITE_CONFIG_FILE
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidPrivacySetting(
            f"site configuration {config_file} not found, so the site has no privacy budget. "
            "Provision the site again or create the file."
        ) from None
    except json.JSONDecodeError as error:
        raise InvalidPrivacySetting(f"site configuration {config_file} is not valid JSON: {error}") from None
    budget = config.get("privacy_budget") if isinstance(config, dict) else None
    if not isinstance(budget, dict):
        raise InvalidPrivacySetting(
            f"site configuration {config_file} has no privacy_budget object (found {budget!r}). "
            'Add for example "privacy_budget": {"epsilon": 10.0, "delta": 0.0001}.'
        )
    unknown = set(budget) - {"epsilon", "delta"}
    if unknown:
        raise InvalidPrivacySetting(
            f"privacy_budget in {config_file} has unknown keys {sorted(unknown)}; use only epsilon and delta"
        )
    fields = {"epsilon": "epsilon_budget", "delta": "delta"}
    return PrivacyBudget(**{fields[key]: value for key, value in budget.items()})


class PrivacyLedger:
    """The epsilon each job has spent at one site, stored in ``<site_root>/privacy-ledger.json``.

    Privacy: protects the site's records against a server or consortium that keeps asking for rounds or jobs.
    Every read validates the whole file, and a corrupt ledger raises ``InvalidPrivacyInput``, so training stops
    rather than starting from an empty ledger.

    Args:
        site_root: The site's kit folder.
    """

    def __init__(self, site_root: str | Path) -> None:
        self.path = Path(site_root) / LEDGER_FILE
        self._lock_path = self.path.with_name(LEDGER_FILE + ".lock")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # One lock file per site serialises jobs that run at the same time, so two jobs cannot both pass the
        # budget check on the same old ledger.
        with open(self._lock_path, "a", encoding="utf-8") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _read_entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise InvalidPrivacyInput(
                f"privacy ledger {self.path} cannot be read: {error}. Restore it from a backup; training is "
                "refused because the epsilon already spent is unknown."
            ) from None
        if not isinstance(document, dict) or document.get("version") != LEDGER_VERSION:
            raise InvalidPrivacyInput(
                f"privacy ledger {self.path} is not a version {LEDGER_VERSION} ledger. Restore it from a backup."
            )
        entries = document.get("jobs")
        if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
            raise InvalidPrivacyInput(f"privacy ledger {self.path} has no list of job entries. Restore it.")
        return entries

    @staticmethod
    def _spend(entry: dict[str, Any]) -> JobSpend:
        try:
            return JobSpend.model_validate({key: entry.get(key) for key in ("job_id", "epsilon", "delta")})
        except InvalidPrivacySetting as error:
            raise InvalidPrivacyInput(f"privacy ledger entry {entry!r} is invalid: {error}") from None

    def jobs(self) -> list[JobSpend]:
        """Return one validated entry per job.

        Raises:
            InvalidPrivacyInput: The ledger file is unreadable or an entry is invalid.
        """
        return [self._spend(entry) for entry in self._read_entries()]

    def _write(self, entries: list[dict[str, Any]]) -> None:
        document = {"version": LEDGER_VERSION, "jobs": entries}
        descriptor, temporary = tempfile.mkstemp(prefix=LEDGER_FILE, suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump(document, handle, indent=2)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise

    def charge(
        self,
        budget: PrivacyBudget,
        *,
        job_id: str,
        epsilon_after_round: float,
        delta: float,
        mechanism: str,
    ) -> float:
        """Admit the next round of ``job_id`` and record its cumulative epsilon before it trains.

        Privacy: the site-side guard against overspending. The increment checked against the budget is
        ``epsilon_after_round`` minus the epsilon already recorded for the job. An epsilon that is not a finite
        number, a corrupt ledger or an exceeded budget raises, and then nothing is written.

        Args:
            budget: The site's budget (``load_site_budget``).
            job_id: The job asking to train.
            epsilon_after_round: The job's cumulative epsilon once the round has trained.
            delta: The delta the job's epsilon is stated at.
            mechanism: Name stored with the entry, for example "dp-sgd".

        Returns:
            The total epsilon the site has spent across all jobs once this round is charged.

        Raises:
            BudgetExceeded: The round would take the site past its epsilon or delta budget.
            InvalidPrivacyInput: The ledger is corrupt or ``epsilon_after_round`` is not a finite number >= 0.
        """
        if not isinstance(epsilon_after_round, (int, float)) or not math.isfinite(epsilon_after_round):
            raise InvalidPrivacyInput(
                f"invalid epsilon_after_round={epsilon_after_round!r} for job {job_id!r}: the accountant did not "
                "return a finite epsilon, so the round is refused"
            )
        with self._locked():
            entries = self._read_entries()
            jobs = [self._spend(entry) for entry in entries]
            recorded = next((job.epsilon for job in jobs if job.job_id == job_id), 0.0)
            increment = max(float(epsilon_after_round) - recorded, 0.0)
            budget.check_can_train(jobs, job_id=job_id, next_round_epsilon=increment, job_delta=delta)
            entry = {
                "job_id": job_id,
                "epsilon": max(float(epsilon_after_round), recorded),
                "delta": float(delta),
                "mechanism": mechanism,
                "updated_at": datetime.now(UTC).isoformat(),
            }
            entries = [existing for existing in entries if existing.get("job_id") != job_id] + [entry]
            self._write(entries)
            total = math.fsum(self._spend(existing).epsilon for existing in entries)
        logger.info("privacy ledger: job %s charged to epsilon=%.4g, site total %.4g", job_id, entry["epsilon"], total)
        return total
