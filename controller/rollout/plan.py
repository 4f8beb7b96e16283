"""A rollout's parameters and its plan: which hosts go in which wave, how many may fail (pure).

* ``--canary N|P%`` and ``--batch N|P%`` are counts of hosts, or percentages of the selection
  rounded **up** (a wave is never empty: at least one host);
* ``--max-failures N|P%`` is the failure budget of the whole rollout, a percentage rounded
  **down** (``10%`` of 5 hosts is 0: the first failure is past the budget);
* waves: wave 0 is the canary (the first hosts in file order), then waves of ``batch`` hosts.
"""

from __future__ import annotations

import math
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cutover.agent.errors import ConfigError

__all__ = ["Amount", "RolloutParams", "failure_budget", "parse_amount", "plan_waves"]

_AMOUNT = re.compile(r"^(\d{1,6})(%?)$")


class Amount(BaseModel):
    """A number of hosts, absolute or a percentage of the selection."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    value: int = Field(ge=0)
    percent: bool = False

    def __str__(self) -> str:
        return f"{self.value}{'%' if self.percent else ''}"

    def of(self, total: int, *, round_up: bool) -> int:
        """How many hosts of ``total`` this is."""
        if not self.percent:
            return self.value
        exact = self.value * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)


def parse_amount(option: str, text: str, *, allow_zero: bool = False) -> Amount:
    """``"2"`` or ``"25%"`` for ``option``.

    Raises:
        ConfigError: not a count or a percentage (0-100), or zero where a host is needed.
    """
    m = _AMOUNT.match(text.strip())
    if m is None:
        raise ConfigError(f"{option} {text!r}: give a number of hosts (2) or a percentage (25%)")
    value, percent = int(m.group(1)), bool(m.group(2))
    if percent and value > 100:
        raise ConfigError(f"{option} {text!r}: a percentage is at most 100%")
    if value == 0 and not allow_zero:
        raise ConfigError(f"{option} {text!r}: at least one host")
    return Amount(value=value, percent=percent)


class RolloutParams(BaseModel):
    """Every knob of a rollout (docs/rollouts.md); stored with the rollout for ``--resume``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    canary: Amount = Amount(value=1)
    batch: Amount = Amount(value=25, percent=True)
    max_parallel: int = Field(default=10, ge=1, le=1000)
    bake_s: float = Field(default=0.0, ge=0, le=86400)  # min healthy time of each wave
    healthy_deadline_s: float = Field(default=300.0, gt=0, le=86400)  # one host's activation
    progress_deadline_s: float = Field(default=10.0, gt=0, le=3600)  # an agent silent this long
    max_failures: Amount = Amount(value=0)
    auto_revert: bool = True
    pause_after_canary: bool = False

    @field_validator("canary", "batch")
    @classmethod
    def _nonzero(cls, v: Amount) -> Amount:
        if v.value == 0:
            raise ValueError("at least one host")
        return v


def plan_waves(hosts: list[str], canary: Amount, batch: Amount) -> list[list[str]]:
    """``hosts`` (file order) cut into waves: the canary first, then batches.

    >>> plan_waves(["a", "b", "c", "d", "e"], Amount(value=1), Amount(value=2))
    [['a'], ['b', 'c'], ['d', 'e']]
    """
    total = len(hosts)
    if total == 0:
        return []
    first = max(1, min(total, canary.of(total, round_up=True)))
    size = max(1, batch.of(total, round_up=True))
    waves = [hosts[:first]]
    rest = hosts[first:]
    waves += [rest[i : i + size] for i in range(0, len(rest), size)]
    return waves


def failure_budget(max_failures: Amount, total: int) -> int:
    """How many hosts may fail (outside the canary) before the whole rollout is reverted."""
    return max_failures.of(total, round_up=False)
