"""Property test of the whole HTTP API from its OpenAPI schema: generated requests never cause a server error.

schemathesis generates requests for every operation of the app's own OpenAPI document, valid ones and ones that
break the schema, and sends them in process (ASGI) with valid tokens, so handlers and services run, not only the
authentication. The database is SQLite, seeded with a finished job so some generated ids exist.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from admin_test_support import API_TOKEN, EVENT_TOKEN, EventFactory
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from admin_api.app import create_app
from admin_api.db import upgrade
from admin_api.settings import Settings

MIN_REQUESTS = 1000
TIME_LIMIT_S = 120.0
"""Generation stops here even below MIN_REQUESTS, which then fails the test instead of hanging the suite."""
EXAMPLES_PER_PASS = 60


@pytest.fixture
def live_app(tmp_path: Path, make_event: EventFactory) -> Iterator[Any]:
    url = f"sqlite:///{tmp_path}/admin.sqlite"
    upgrade(url)
    app_settings = Settings(
        database_url=url,
        event_token=EVENT_TOKEN,  # type: ignore[arg-type]
        api_token=API_TOKEN,  # type: ignore[arg-type]
        report_signing_key=tmp_path / "report_signing_key.pem",
    )
    app = create_app(app_settings)
    with TestClient(app) as client:
        seed = [
            make_event("job.submitted"),
            make_event("job.started"),
            make_event("contribution.accepted"),
            make_event("round.completed"),
            make_event("job.finished"),
        ]
        response = client.post("/api/v1/events:batch", json=seed, headers={"Authorization": f"Bearer {EVENT_TOKEN}"})
        assert response.status_code == 200
        yield app


def token_for(path: str) -> str:
    return EVENT_TOKEN if path.startswith("/api/v1/events") else API_TOKEN


def is_expected_upstream_error(response: Any) -> bool:
    """Tell whether a response is the 502 for job actions that need FLARE, which this test does not start."""
    if response.status_code != 502:
        return False
    return response.json().get("type") == "urn:consortia:problem:flare-action-failed"


def run_operation(operation: Any, failures: list[str], calls: list[int], deadline: float) -> None:
    """Send up to EXAMPLES_PER_PASS generated requests for one operation; record every 5xx."""

    @settings(
        max_examples=EXAMPLES_PER_PASS,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def send(case: Any) -> None:
        if time.monotonic() > deadline:
            return
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token_for(operation.path)}"}
        request = f"{case.method} {case.formatted_path} query={case.query} body={getattr(case, 'body', None)!r}"
        calls.append(1)
        try:
            response = case.call()
        except Exception as exc:  # noqa: BLE001  # the in-process transport re-raises what the app raised
            failures.append(f"{request} -> raised {type(exc).__name__}: {exc}")
            return
        if response.status_code >= 500 and not is_expected_upstream_error(response):
            failures.append(f"{request} -> {response.status_code}: {response.text[:300]}")

    send()


def test_generated_requests_no_server_error(live_app: Any) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", live_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    deadline = time.monotonic() + TIME_LIMIT_S
    failures: list[str] = []
    calls: list[int] = []

    # Operations with few inputs run out of distinct examples early, so passes repeat until enough requests ran.
    while len(calls) < MIN_REQUESTS and time.monotonic() < deadline:
        for operation in operations:
            run_operation(operation, failures, calls, deadline)

    assert len(operations) >= 10
    assert not failures, f"{len(failures)} server errors, first ones:\n" + "\n".join(failures[:10])
    assert len(calls) >= MIN_REQUESTS, f"only {len(calls)} requests within {TIME_LIMIT_S:.0f} s"
    print(f"{len(calls)} generated requests over {len(operations)} operations, no server error")


# Regressions for server errors the generated requests found.


def test_site_event_naming_job(
    client: TestClient, event_headers: dict[str, str], read_headers: dict[str, str], make_event: EventFactory
) -> None:
    event = make_event("site.joined", job_id="job-9")
    assert client.post("/api/v1/events", json=event, headers=event_headers).status_code == 201
    assert client.get("/api/v1/jobs/job-9", headers=read_headers).status_code == 404


def test_job_list_offset_too_large(client: TestClient, read_headers: dict[str, str]) -> None:
    response = client.get("/api/v1/jobs", params={"offset": 2**63}, headers=read_headers)
    assert response.status_code == 422
    assert "offset" in response.json()["detail"]


def test_event_body_schema_valid(client: TestClient) -> None:
    body = client.get("/openapi.json").json()["paths"]["/api/v1/events"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/EventCreateBody"}


def test_openapi_examples_valid(client: TestClient) -> None:
    """Every example the OpenAPI document shows for a component validates against that component's model."""
    from admin_api.schemas.events import EVENT_MODELS, EventBatchReceiptPublic, EventReceiptPublic
    from admin_api.schemas.reports import SignatureStatementPublic
    from admin_api.schemas.sites import SitePublic, SitesPublic

    models = {model.__name__: model for model in EVENT_MODELS.values()}
    for model in (EventBatchReceiptPublic, EventReceiptPublic, SignatureStatementPublic, SitePublic, SitesPublic):
        models[model.__name__] = model
    components = client.get("/openapi.json").json()["components"]["schemas"]
    checked = []
    for name, model in models.items():
        for example in components.get(name, model.model_json_schema()).get("examples", []):
            model.model_validate(example)
            checked.append(name)
    assert set(checked) == set(models)
