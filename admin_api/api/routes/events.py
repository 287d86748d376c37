"""Event ingestion routes, called by the FLARE server's event forwarder."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response, status
from pydantic import RootModel

from admin_api.api.deps import EventWriterDep, WriteSessionDep
from admin_api.schemas.events import MAX_BATCH_SIZE, EventBatchReceiptPublic, EventCreate, EventReceiptPublic
from admin_api.services.ingest import ingest_events

router = APIRouter(prefix="/api/v1", tags=["events"])


class EventCreateBody(RootModel[EventCreate]):
    """One event of any type; ``type`` selects the payload schema.

    FastAPI 0.165 writes the discriminated union of a bare body parameter into OpenAPI with schemas, not references,
    as discriminator mapping values, which is invalid OpenAPI. A root model is emitted as a component with a valid
    mapping.
    """


@router.post(
    "/events",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": EventReceiptPublic, "description": "Replay of an ingested event; nothing written."}},
)
def post_event(
    event: Annotated[EventCreateBody, Body()],
    session: WriteSessionDep,
    _principal: EventWriterDep,
    response: Response,
) -> EventReceiptPublic:
    """Ingest one event: 201 when new, 200 with ``duplicate: true`` for a replay of the same event_id."""
    receipt = ingest_events(session, [event.root]).results[0]
    if receipt.duplicate:
        response.status_code = status.HTTP_200_OK
    return receipt


@router.post("/events:batch")
def post_event_batch(
    events: Annotated[list[EventCreate], Body(min_length=1, max_length=MAX_BATCH_SIZE)],
    session: WriteSessionDep,
    _principal: EventWriterDep,
) -> EventBatchReceiptPublic:
    """Ingest up to 500 events in order, all or none, in one transaction."""
    return ingest_events(session, events)
