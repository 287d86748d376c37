"""Server component that reports FLARE job lifecycle, rounds and contributions to the admin service.

Provisioning adds this component to the server's ``local/resources.json``, so it runs in the server's main process
(job started and finished, sites joining and leaving) and jobs cannot remove it. Job processes (rounds and
contributions from our controller) write their events into the same spool with ``spool_event``.

Delivery is at least once and survives an unreachable or restarted service: each event is first written to a spool
folder shared by all server processes, then a background thread posts spooled events in order and deletes each
one only after the service acknowledged it. The service ingests idempotently by ``event_id``, so a replay after
a crash stores nothing twice. An event the service rejects as invalid (HTTP 400/409/422) is moved to
``<spool>/rejected`` with the reason, so one bad event cannot block the rest.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext

from app_custom.flare.events import make_envelope

REJECTED_DIR = "rejected"
EVENT_FORWARDER_ID = "consortia_event_forwarder"
_PERMANENT_REJECTIONS = (400, 404, 409, 422)


class EventSpool:
    """Folder of pending events, one JSON file each, named so that sorting gives the order they were raised in."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / REJECTED_DIR).mkdir(exist_ok=True)

    def put(self, envelope: dict[str, Any]) -> Path:
        """Write ``envelope`` atomically and return its file."""
        name = f"{time.time_ns():020d}-{os.getpid()}-{envelope['event_id']}.json"
        target = self.folder / name
        tmp = self.folder / f".{name}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(envelope, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        return target

    def pending(self) -> list[Path]:
        return sorted(p for p in self.folder.glob("*.json") if not p.name.startswith("."))

    def reject(self, path: Path, reason: str) -> None:
        target = self.folder / REJECTED_DIR / path.name
        try:
            os.replace(path, target)
        except FileNotFoundError:
            return
        target.with_suffix(".reason.txt").write_text(reason + "\n", encoding="utf-8")


class EventForwarder(FLComponent):
    """Spools Consortia and FLARE lifecycle events and posts them to the admin service.

    Args:
        url: the admin service's event endpoint.
        token_file: file holding the bearer token for ``url``.
        spool_dir: folder for events not yet acknowledged.
        timeout: seconds per HTTP request.
        retry_interval: seconds between retries while the service is unreachable.
    """

    def __init__(
        self,
        url: str,
        token_file: str,
        spool_dir: str,
        timeout: float = 5.0,
        retry_interval: float = 1.0,
    ) -> None:
        super().__init__()
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"invalid event url {url!r}: use an http(s) URL of the admin service")
        self.url = url
        self.token_file = token_file
        self.spool = EventSpool(spool_dir)
        self.timeout = timeout
        self.retry_interval = retry_interval
        self._wakeup = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._finished_jobs: set[str] = set()

    # ------------------------------------------------------------------ FLARE events

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type in (EventType.SYSTEM_START, EventType.START_RUN):
            self._start_sender()
        elif event_type == EventType.JOB_STARTED:
            self._on_job_started(fl_ctx)
        elif event_type in (EventType.JOB_COMPLETED, EventType.JOB_ABORTED):
            self._on_job_finished(fl_ctx)
        elif event_type == EventType.CLIENT_REGISTER_PROCESSED:
            self._on_site(fl_ctx, "site.joined")
        elif event_type == EventType.CLIENT_QUIT:
            self._on_site(fl_ctx, "site.left")
        elif event_type in (EventType.END_RUN, EventType.SYSTEM_END):
            self.flush(timeout=10.0)

    def _job_meta(self, fl_ctx: FLContext) -> tuple[str | None, dict[str, Any]]:
        data = fl_ctx.get_prop(FLContextKey.EVENT_DATA) or {}
        job_id = data.get("job_id") if isinstance(data, dict) else None
        if not job_id:
            return None, {}
        job_manager = getattr(fl_ctx.get_engine(), "job_def_manager", None)
        job = job_manager.get_job(job_id, fl_ctx) if job_manager else None
        return job_id, dict(job.meta) if job else {}

    def _on_job_started(self, fl_ctx: FLContext) -> None:
        job_id, meta = self._job_meta(fl_ctx)
        if not job_id:
            return
        sites = {site for sites in (meta.get("deploy_map") or {}).values() for site in sites} - {"server"}
        if any(site.upper() == "@ALL" for site in sites):
            sites = {client.name for client in fl_ctx.get_engine().get_clients()}
        payload = {
            "name": meta.get("name"),
            "sites": sorted(sites),
            "submitter": meta.get("submitter_name"),
            "submitter_org": meta.get("submitter_org"),
            "submitter_role": meta.get("submitter_role"),
        }
        self._enqueue(make_envelope("job.started", job_id=job_id, actor=meta.get("submitter_name"), payload=payload))

    def _on_job_finished(self, fl_ctx: FLContext) -> None:
        job_id, meta = self._job_meta(fl_ctx)
        status = meta.get("status")
        if not job_id or not status or job_id in self._finished_jobs:
            return
        self._finished_jobs.add(job_id)
        envelope = make_envelope("job.finished", job_id=job_id, actor=meta.get("submitter_name"), payload={"status": status})
        self._enqueue(envelope)

    def _on_site(self, fl_ctx: FLContext, event_type: str) -> None:
        peer = fl_ctx.get_peer_context()
        site = peer.get_identity_name() if peer else None
        if not site:
            return
        if event_type == "site.joined":
            known = {client.name for client in fl_ctx.get_engine().get_clients()}
            if site not in known:
                return
        self._enqueue(make_envelope(event_type, job_id=None, site=site))

    # ------------------------------------------------------------------ delivery

    def _enqueue(self, envelope: dict[str, Any]) -> None:
        try:
            self.spool.put(envelope)
        except OSError as exc:
            # The event cannot be made durable (for example a full disk); it is still posted once from memory.
            self.logger.error("failed to spool event %s (%s): %s", envelope.get("event_id"), envelope.get("type"), exc)
            self._post(envelope)
            return
        self._start_sender()
        self._wakeup.set()

    def _start_sender(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._send_loop, name="consortia-event-forwarder", daemon=True)
        self._thread.start()

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            delivered_all = self.deliver_pending()
            self._wakeup.wait(timeout=0.5 if delivered_all else self.retry_interval)
            self._wakeup.clear()

    def deliver_pending(self) -> bool:
        """Post every spooled event in order; return False when the service could not be reached."""
        for path in self.spool.pending():
            try:
                envelope = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                continue  # another server process delivered it
            except json.JSONDecodeError as exc:
                self.spool.reject(path, f"unreadable spool file: {exc}")
                continue
            outcome = self._post(envelope)
            if outcome == "delivered":
                path.unlink(missing_ok=True)
            elif outcome.startswith("rejected"):
                self.spool.reject(path, outcome)
            else:
                return False
        return True

    def _post(self, envelope: dict[str, Any]) -> str:
        try:
            token = Path(self.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            self.logger.error("cannot read the event token file %s: %s", self.token_file, exc)
            return "retry"
        try:
            response = httpx.post(
                self.url, json=envelope, headers={"Authorization": f"Bearer {token}"}, timeout=self.timeout
            )
        except httpx.HTTPError as exc:
            self.logger.debug("admin service unreachable at %s: %s", self.url, exc)
            return "retry"
        if response.is_success:
            return "delivered"
        if response.status_code in _PERMANENT_REJECTIONS:
            reason = f"rejected with HTTP {response.status_code}: {response.text[:500]}"
            self.logger.error("admin service rejected event %s (%s): %s", envelope["event_id"], envelope["type"], reason)
            return reason
        self.logger.warning(
            "admin service answered HTTP %d for event %s; retrying", response.status_code, envelope["event_id"]
        )
        return "retry"

    def flush(self, timeout: float) -> bool:
        """Try to deliver everything spooled within ``timeout`` seconds; undelivered events stay spooled."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.deliver_pending() and not self.spool.pending():
                return True
            time.sleep(0.2)
        self.logger.warning("%d events still spooled in %s", len(self.spool.pending()), self.spool.folder)
        return False


_spools: dict[str, EventSpool | None] = {}


def spool_for_server(server_root: str | Path) -> EventSpool | None:
    """Return the event spool configured in a server kit's ``local/resources.json`` (None when not configured)."""
    key = str(server_root)
    if key not in _spools:
        _spools[key] = None
        try:
            resources = json.loads((Path(server_root) / "local" / "resources.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        for component in resources.get("components", []):
            if component.get("id") == EVENT_FORWARDER_ID:
                _spools[key] = EventSpool(component["args"]["spool_dir"])
    return _spools[key]


def spool_event(server_root: str | Path, envelope: dict[str, Any]) -> bool:
    """Spool ``envelope`` for delivery by the server's event forwarder; return False when none is configured.

    Raises:
        OSError: when the spool cannot be written (for example a full disk).
    """
    spool = spool_for_server(server_root)
    if spool is None:
        return False
    spool.put(envelope)
    return True
