"""The wire models (agent/api_models.py) stay in step with the records they carry."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pydantic import BaseModel

from cutover.agent.api_models import (
    AppDetail,
    Event,
    OperationRecord,
    OperationResult,
    PendingIntent,
    ReleaseInfo,
)
from cutover.agent.errors import CancelledOperationError, SignatureError
from cutover.agent.host.state import Pending, ReleaseRecord
from cutover.agent.lifecycle.manager import OpResult


@pytest.mark.parametrize(
    ("wire", "record"),
    [
        pytest.param(ReleaseInfo, ReleaseRecord, id="release"),
        pytest.param(PendingIntent, Pending, id="pending"),
    ],
)
def test_wire_model_has_exactly_the_fields_of_the_state_record(
    wire: type[BaseModel], record: type[BaseModel]
) -> None:
    """A field added to the state file is a conscious decision for the API (and its docs)."""
    assert set(wire.model_fields) == set(record.model_fields)


def test_operation_result_types_every_field_of_the_lifecycle_result() -> None:
    core = {f.name for f in dataclasses.fields(OpResult)} - {"details"}
    assert core <= set(OperationResult.model_fields)


def test_responses_keep_fields_a_newer_agent_adds() -> None:
    """Tolerant but typed: known fields are validated, unknown ones kept, not refused."""
    detail = AppDetail.model_validate(
        {
            "app": "ame",
            "root": "/srv/ame",
            "initialized": True,
            "releases": [
                {"version": "1.0.0", "status": "active", "seq": 1, "manifest_digest": "ab"}
            ],
            "lease": {"holder": "rollout-7"},
        }
    )
    assert detail.releases[0].status == "active" and detail.releases[0].installed is True
    assert detail.model_extra == {"lease": {"holder": "rollout-7"}}
    with pytest.raises(ValueError, match="seq"):
        ReleaseInfo.model_validate({"version": "1", "status": "x", "seq": "many"})


@pytest.mark.parametrize(
    "line",
    [
        {"event": "stage.failed", "version": "1.0.0", "error": "payload digest differs"},
        {"event": "health.check", "phase": "live", "name": "http", "status": "pass"},
        {"event": "revert.start", "version": "1.1.0", "to": None, "reason": "hook failed"},
        {"event": "progress", "step": "extract", "done": 10, "total": 20},
    ],
    ids=lambda line: line["event"],
)
def test_every_event_shape_the_agent_emits_parses(line: dict[str, Any]) -> None:
    event = Event.model_validate({"seq": 3, "ts": "2026-03-07T10:02:11.120Z", **line})
    assert event.event == line["event"]
    assert event.raise_for_error() is event  # only a failed operation.done raises


def test_a_failed_operation_done_event_raises_its_error() -> None:
    event = Event.model_validate(
        {
            "seq": 9,
            "ts": "t",
            "event": "operation.done",
            "status": "failed",
            "result": None,
            "error": {"error": "cancelled", "kind": "cancelled", "message": "agent stopped"},
        }
    )
    with pytest.raises(CancelledOperationError, match="agent stopped"):
        event.raise_for_error()


def test_a_failed_record_raises_its_error_as_the_registry_class() -> None:
    record = OperationRecord.model_validate(
        {
            "id": "0fefcd7c1eddeb51",
            "op": "stage",
            "app": "demo",
            "status": "failed",
            "error": {"error": "untrusted", "kind": "bad_signature", "message": "no trusted key"},
        }
    )
    with pytest.raises(SignatureError) as info:
        record.raise_for_error()
    assert info.value.code == "untrusted"
    assert str(info.value) == "operation 0fefcd7c1eddeb51 (stage demo): no trusted key"
    ok = record.model_copy(update={"status": "succeeded", "error": None})
    assert ok.raise_for_error() is ok
