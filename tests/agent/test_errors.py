"""The error registry (agent/errors.py): one code per class, every class registered, one shape.

These are the properties the client relies on to raise, across the wire, the class a local caller
would see: tests/e2e/test_error_roundtrip.py proves it against a real daemon.
"""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
from pathlib import Path

import pytest

import cutover.agent
import cutover.controller
from cutover.agent import errors
from cutover.agent.api_models import ErrorBody
from cutover.agent.errors import (
    REGISTRY,
    CutoverError,
    ExitCode,
    LockedError,
    OperationalError,
    RejectedError,
    error_class,
    kind_of,
)

REPO = Path(__file__).resolve().parents[2]


def _all_subclasses(cls: type[CutoverError]) -> set[type[CutoverError]]:
    found: set[type[CutoverError]] = set()
    todo = [cls]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


def _import_everything() -> None:
    for top in (cutover.agent, cutover.controller):
        for info in pkgutil.walk_packages(top.__path__, top.__name__ + "."):
            importlib.import_module(info.name)


def test_registry_is_a_bijection_between_codes_and_classes() -> None:
    codes = list(REGISTRY)
    classes = [entry.cls for entry in REGISTRY.values()]
    assert len(set(codes)) == len(codes)
    assert len(set(classes)) == len(classes)
    for code, entry in REGISTRY.items():
        assert entry.code == code == entry.cls.code
        assert error_class(code) is entry.cls
        assert kind_of(entry.cls) is entry
        assert entry.cls.http_status == entry.http_status
        assert entry.cls.exit_code == entry.exit_code


def test_every_cutover_error_subclass_is_registered() -> None:
    """Across every module of agent and controller: a subclass without its own code would
    travel as its parent and be raised as the parent on the other side."""
    _import_everything()
    registered = {entry.cls for entry in REGISTRY.values()}
    unregistered = {c.__qualname__ for c in _all_subclasses(CutoverError) - registered}
    assert not unregistered, f"register these in agent/errors.py: {sorted(unregistered)}"
    assert CutoverError in registered


def test_a_code_is_registered_once() -> None:
    """Checked at import: a second class cannot claim a code (the registry is untouched)."""
    before = dict(REGISTRY)
    with pytest.raises(TypeError, match="taken by DowngradeError"):
        errors._registered("downgrade", 422, ExitCode.REJECTED)(errors.MismatchError)
    assert dict(REGISTRY) == before and errors.MismatchError.code == "mismatch"


def test_separate_roots_for_rejected_input_and_operational_failure() -> None:
    for entry in REGISTRY.values():
        if entry.cls in (CutoverError,):
            continue
        rejected = issubclass(entry.cls, RejectedError)
        operational = issubclass(entry.cls, OperationalError)
        assert rejected != operational, entry.cls
        if rejected:
            assert 400 <= entry.http_status < 500, entry  # the sender must fix the input
            assert entry.exit_code in (ExitCode.REJECTED, ExitCode.USAGE), entry


def test_every_exit_code_is_reachable_from_the_registry() -> None:
    used = {entry.exit_code for entry in REGISTRY.values()}
    defined = {v for k, v in vars(ExitCode).items() if k.isupper()}
    assert defined - used == {ExitCode.OK}


@pytest.mark.parametrize("code", list(REGISTRY))
def test_wire_body_round_trip_gives_the_same_class_and_code(code: str) -> None:
    cls = REGISTRY[code].cls
    for reason in (None, "some_reason"):
        exc = cls("what happened; what to do", code=reason)
        wire = json.dumps(ErrorBody.of(exc).to_json())
        back = ErrorBody.model_validate_json(wire).to_error(status=REGISTRY[code].http_status)
        assert type(back) is cls
        assert (back.code, back.kind, back.message) == (exc.code, code, exc.message)


def test_locked_error_keeps_its_holder_across_the_wire() -> None:
    holder = {"operation": "activate", "id": "5e0c1f3a9b7d2e44", "agent": "api"}
    body = ErrorBody.of(LockedError("busy", holder=holder)).to_json()
    assert body == {"error": "locked", "kind": "locked", "message": "busy", "holder": holder}
    back = ErrorBody.model_validate(body).to_error(where="web-1")
    assert isinstance(back, LockedError) and back.holder == holder
    assert back.message == "web-1: busy"


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        pytest.param({"error": "downgrade"}, 422, errors.DowngradeError, id="no-kind-known-code"),
        pytest.param({"error": "replayed"}, 401, errors.AuthError, id="no-kind-401-reason"),
        pytest.param({"error": "http_502"}, 502, errors.TransportError, id="proxy-502"),
        pytest.param({"error": "teapot"}, 418, errors.RejectedError, id="unknown-4xx"),
        pytest.param({"error": "x", "kind": "nonsense"}, 500, OperationalError, id="unknown-kind"),
    ],
)
def test_bodies_without_a_known_kind_fall_back_to_code_then_status(
    body: dict[str, str], status: int, expected: type[CutoverError]
) -> None:
    """An older agent (no ``kind``) or a proxy in between still gives a useful class."""
    exc = ErrorBody.model_validate(body).to_error(status=status)
    assert type(exc) is expected and exc.code == body["error"]


def _calls_with_a_code(path: Path) -> list[tuple[int, str, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
        for kw in node.keywords:
            if kw.arg == "code" and isinstance(kw.value, ast.Constant) and name:
                found.append((node.lineno, name, str(kw.value.value)))
    return found


def test_no_raise_site_spells_a_subclass_as_a_code() -> None:
    """``RequestError(..., code="payload_too_large")`` would travel as a 400: the registry's
    ``PayloadTooLargeError`` (413) is the way to say it. A finer reason that is not a registered
    subclass (``AuthError(code="replayed")``) is fine."""
    by_name = {entry.cls.__name__: entry.cls for entry in REGISTRY.values()}
    wrong = []
    for path in sorted([*(REPO / "agent").rglob("*.py"), *(REPO / "controller").rglob("*.py")]):
        for line, name, code in _calls_with_a_code(path):
            called, named = by_name.get(name), error_class(code)
            if called and named and named is not called and issubclass(named, called):
                wrong.append(f"{path.relative_to(REPO)}:{line}: {name}(code={code!r})")
    assert not wrong, "raise the registered subclass instead:\n" + "\n".join(wrong)


def test_a_reverted_activation_says_typed_whether_its_live_checks_were_inconclusive() -> None:
    """The rollout pauses on ``health == "inconclusive"``, never on a word of the message."""
    exc = errors.ActivationFailedError(
        "reverted: a dependency was unreachable", health="inconclusive"
    )
    body = ErrorBody.of(exc).to_json()
    assert body["health"] == "inconclusive"
    back = ErrorBody.model_validate(body).to_error()
    assert isinstance(back, errors.ActivationFailedError) and back.health == "inconclusive"
    plain = ErrorBody.of(errors.ActivationFailedError("reverted: hook failed")).to_json()
    assert "health" not in plain
    assert ErrorBody.model_validate(plain).to_error().health is None  # type: ignore[attr-defined]
