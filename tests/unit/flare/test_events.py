import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app_custom.core.round_metrics import clean_metrics as _clean
from app_custom.core.round_metrics import weighted_site_mean
from app_custom.flare.event_forwarder import EventForwarder, EventSpool, spool_event, spool_for_server
from app_custom.flare.events import SCHEMA_VERSION, make_envelope


def test_envelope_has_contract_fields():
    envelope = make_envelope("round.started", job_id="j1", round_number=0, payload={"num_rounds": 2})
    assert envelope["schema_version"] == SCHEMA_VERSION
    assert uuid.UUID(envelope["event_id"])
    assert envelope["occurred_at"].endswith("+00:00")
    assert set(envelope) == {"schema_version", "event_id", "type", "occurred_at", "job_id", "site", "round", "actor", "payload"}


def test_unknown_event_type_rejected():
    with pytest.raises(ValueError, match="unknown event type 'round.exploded'"):
        make_envelope("round.exploded", job_id=None)


def test_site_mean_weights_by_test_size():
    metrics = {
        "a": {"global_roc_auc": 0.8, "num_test_examples": 300},
        "b": {"global_roc_auc": 0.6, "num_test_examples": 100},
    }
    assert weighted_site_mean(metrics, "global")["roc_auc"] == pytest.approx(0.75)


def test_site_mean_skips_undefined_auc():
    metrics = {
        "a": {"global_roc_auc": None, "global_accuracy": 1.0, "num_test_examples": 50},
        "b": {"global_roc_auc": 0.7, "global_accuracy": 0.5, "num_test_examples": 50},
    }
    result = weighted_site_mean(metrics, "global")
    assert result["roc_auc"] == pytest.approx(0.7)
    assert result["accuracy"] == pytest.approx(0.75)


def test_site_mean_undefined_everywhere_is_none():
    assert weighted_site_mean({"a": {"global_roc_auc": None, "num_test_examples": 5}}, "global")["roc_auc"] is None


def test_clean_turns_nan_into_none():
    assert _clean({"a": float("nan"), "b": 1, "c": "text", "d": None}) == {"a": None, "b": 1.0, "d": None}


class Receiver(BaseHTTPRequestHandler):
    received: list = []
    status = 200

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).received.append((self.headers["Authorization"], body))
        self.send_response(type(self).status)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    Receiver.received = []
    Receiver.status = 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/v1/events"
    server.shutdown()
    server.server_close()


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text("t" * 40 + "\n")
    return path


def test_spooled_events_delivered_in_order(tmp_path, receiver, token_file):
    forwarder = EventForwarder(url=receiver, token_file=str(token_file), spool_dir=str(tmp_path / "spool"))
    events = [make_envelope("round.started", job_id="j", round_number=r) for r in range(3)]
    for envelope in events:
        forwarder.spool.put(envelope)
    assert forwarder.deliver_pending()
    assert [body["event_id"] for _, body in Receiver.received] == [e["event_id"] for e in events]
    assert Receiver.received[0][0] == "Bearer " + "t" * 40
    assert forwarder.spool.pending() == []


def test_unreachable_service_keeps_events(tmp_path, token_file):
    forwarder = EventForwarder(url="http://127.0.0.1:9/none", token_file=str(token_file), spool_dir=str(tmp_path / "s"))
    forwarder.spool.put(make_envelope("site.left", job_id=None, site="a"))
    assert not forwarder.deliver_pending()
    assert len(forwarder.spool.pending()) == 1


def test_invalid_event_set_aside(tmp_path, receiver, token_file):
    Receiver.status = 422
    forwarder = EventForwarder(url=receiver, token_file=str(token_file), spool_dir=str(tmp_path / "s"))
    forwarder.spool.put(make_envelope("site.left", job_id=None, site="a"))
    assert forwarder.deliver_pending()
    assert forwarder.spool.pending() == []
    rejected = list((tmp_path / "s" / "rejected").glob("*.json"))
    assert len(rejected) == 1
    assert "422" in rejected[0].with_suffix(".reason.txt").read_text()


def test_server_error_retried_later(tmp_path, receiver, token_file):
    Receiver.status = 503
    forwarder = EventForwarder(url=receiver, token_file=str(token_file), spool_dir=str(tmp_path / "s"))
    forwarder.spool.put(make_envelope("site.left", job_id=None, site="a"))
    assert not forwarder.deliver_pending()
    assert len(forwarder.spool.pending()) == 1


def test_bad_url_rejected(tmp_path):
    with pytest.raises(ValueError, match="invalid event url"):
        EventForwarder(url="ftp://x", token_file="t", spool_dir=str(tmp_path))


def test_job_process_finds_spool_from_resources(tmp_path):
    (tmp_path / "local").mkdir()
    resources = {"components": [{"id": "consortia_event_forwarder", "args": {"spool_dir": str(tmp_path / "spool")}}]}
    (tmp_path / "local" / "resources.json").write_text(json.dumps(resources))
    assert spool_event(tmp_path, make_envelope("site.joined", job_id=None, site="a"))
    assert len(EventSpool(tmp_path / "spool").pending()) == 1


def test_no_forwarder_configured(tmp_path):
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "resources.json").write_text(json.dumps({"components": []}))
    assert spool_for_server(tmp_path) is None
    assert not spool_event(tmp_path, make_envelope("site.joined", job_id=None, site="a"))
