"""The OpenAPI document: every schema a path uses shows an example, and every error response is problem details.

``test_schemathesis.py`` checks the examples of a few event and site models. These tests cover every schema that a
path uses and the error responses of every operation.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from typing import Any

import pytest
from admin_test_support import API_TOKEN, EVENT_TOKEN
from fastapi.testclient import TestClient
from pydantic import BaseModel

import admin_api.schemas
from admin_api.api.problems import PROBLEM_JSON
from admin_api.app import create_app
from admin_api.settings import Settings

COMPONENT_REF = "#/components/schemas/"
PROBLEM_REFS = {f"{COMPONENT_REF}ProblemPublic", f"{COMPONENT_REF}ValidationProblemPublic"}
HTTP_METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture
def client(tmp_path: Any) -> Iterator[TestClient]:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/admin.sqlite",
        event_token=EVENT_TOKEN,  # type: ignore[arg-type]
        api_token=API_TOKEN,  # type: ignore[arg-type]
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def document(client: TestClient) -> dict[str, Any]:
    return client.get("/openapi.json").json()  # type: ignore[no-any-return]


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method, path, operation


def resolve(schema: dict[str, Any], document: dict[str, Any], root: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Return the name and the schema a ``$ref`` points to: a component, or a ``$defs`` entry of an inline schema."""
    ref = schema["$ref"]
    if ref.startswith(COMPONENT_REF):
        name = ref.removeprefix(COMPONENT_REF)
        return name, document["components"]["schemas"][name]
    name = ref.removeprefix("#/$defs/")
    return name, root["$defs"][name]


def models_without_examples(document: dict[str, Any]) -> dict[str, set[str]]:
    """Return each object schema reachable from a path that has no examples, with the operations that use it.

    Object schemas are the pydantic models. Enums list their values and scalars need no example, so they are skipped.
    """
    missing: dict[str, set[str]] = {}
    for method, path, operation in operations(document):
        where = f"{method.upper()} {path}"
        roots = [parameter.get("schema", {}) for parameter in operation.get("parameters", [])]
        bodies = [operation.get("requestBody", {}), *operation.get("responses", {}).values()]
        roots += [media.get("schema", {}) for body in bodies for media in body.get("content", {}).values()]
        for root in roots:
            seen: set[str] = set()
            stack: list[tuple[str, dict[str, Any]]] = [(where, root)]
            while stack:
                name, schema = stack.pop()
                if "$ref" in schema:
                    name, schema = resolve(schema, document, root)
                    if name in seen:
                        continue
                    seen.add(name)
                if schema.get("type") == "object" and "properties" in schema and not schema.get("examples"):
                    missing.setdefault(schema.get("title", name), set()).add(where)
                for key in ("properties", "$defs"):
                    stack += [(name, child) for child in schema.get(key, {}).values()]
                for key in ("items", "additionalProperties"):
                    if isinstance(schema.get(key), dict):
                        stack.append((name, schema[key]))
                for key in ("anyOf", "oneOf", "allOf"):
                    stack += [(name, child) for child in schema.get(key, [])]
    return missing


def schema_models() -> dict[str, type[BaseModel]]:
    """Return every pydantic model of the ``admin_api.schemas`` modules by class name."""
    models: dict[str, type[BaseModel]] = {}
    for info in pkgutil.iter_modules(admin_api.schemas.__path__):
        module = importlib.import_module(f"admin_api.schemas.{info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseModel) and value.__module__ == module.__name__:
                models[value.__name__] = value
    return models


def test_path_schemas_have_examples(document: dict[str, Any]) -> None:
    missing = models_without_examples(document)
    assert missing == {}, f"schemas without examples, with the operations using them: {missing}"


def test_walker_finds_missing_example(document: dict[str, Any]) -> None:
    document["components"]["schemas"]["JobPublic"].pop("examples")
    missing = models_without_examples(document)
    assert "JobPublic" in missing
    assert "GET /api/v1/jobs" in missing["JobPublic"]


def test_component_examples_validate(document: dict[str, Any]) -> None:
    models = schema_models()
    checked = []
    for name, schema in document["components"]["schemas"].items():
        for example in schema.get("examples", []):
            if name in models:
                models[name].model_validate(example)
                checked.append(name)
    assert {"JobDetailPublic", "JobSubmitCreate", "PrincipalPublic", "ValidationProblemPublic"} <= set(checked)


@pytest.mark.parametrize(
    "name", ["SignedJobReportPublic", "SignedPeriodReportPublic", "JobReportPublic", "PeriodReportPublic"]
)
def test_report_examples_validate(name: str) -> None:
    """Report bodies are inlined in the signed report routes, not components, so their models are checked here."""
    model = schema_models()[name]
    examples = model.model_json_schema()["examples"]
    assert examples
    for example in examples:
        model.model_validate(example)


def test_error_responses_problem_details(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        where = f"{method.upper()} {path}"
        responses = operation["responses"]
        assert "500" in responses, where
        for status, response in responses.items():
            if int(status) < 400:
                continue
            assert list(response["content"]) == [PROBLEM_JSON], f"{where} {status}"
            assert response["content"][PROBLEM_JSON]["schema"]["$ref"] in PROBLEM_REFS, f"{where} {status}"
    assert "HTTPValidationError" not in document["components"]["schemas"]


def probe_url(path: str, operation: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Fill path parameters with an unknown id, and required query parameters with their examples."""
    url = path.replace("{job_id}", "no-such-job")
    params = {}
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "query" and parameter.get("required"):
            schema = parameter.get("schema", {})
            params[parameter["name"]] = (parameter.get("examples") or schema.get("examples") or ["x"])[0]
    return url, params


@pytest.mark.parametrize("token", [None, EVENT_TOKEN, API_TOKEN], ids=["no-token", "event-token", "api-token"])
def test_returned_errors_documented(client: TestClient, document: dict[str, Any], token: str | None) -> None:
    """Each error an operation returns to an empty request, per token, is documented and is problem details."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    undocumented = []
    num_errors = 0
    for method, path, operation in operations(document):
        url, params = probe_url(path, operation)
        response = client.request(method.upper(), url, params=params, headers=headers)
        if response.status_code < 400:
            continue
        num_errors += 1
        assert response.headers["content-type"] == PROBLEM_JSON, f"{method.upper()} {path}"
        if str(response.status_code) not in operation["responses"]:
            undocumented.append(f"{method.upper()} {path} -> {response.status_code}")
    assert num_errors > 0
    assert undocumented == []
