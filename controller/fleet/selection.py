"""Which hosts a command works on: ``--group G`` and/or ``--hosts a,b`` (pure, no I/O).

Rules: no selector means every host in the file; ``--group`` takes the hosts of that group;
``--hosts`` names hosts one by one; both together take the hosts named *and* in the group (a
safety net: ``--group production --hosts web-1`` never reaches a staging box by a typo). An
unknown group or host is an error that lists the known ones; an empty selection is an error.
Hosts come back in file order, without duplicates.
"""

from __future__ import annotations

from cutover.agent.errors import ConfigError
from cutover.controller.fleet.inventory import Fleet, HostSpec

__all__ = ["parse_host_list", "select_hosts"]


def parse_host_list(value: str | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``; None -> ``[]``."""
    if not value:
        return []
    return [part.strip() for part in value.split(",") if part.strip()]


def select_hosts(
    fleet: Fleet, group: str | None = None, hosts: list[str] | None = None
) -> list[HostSpec]:
    """The selected hosts, in file order.

    Raises:
        ConfigError: unknown group or host, or nothing selected.
    """
    groups = fleet.groups()
    chosen = list(fleet.hosts.values())
    if group is not None:
        if group not in groups:
            known = ", ".join(sorted(groups)) or "(none)"
            raise ConfigError(f"{fleet.path}: no group {group!r}; groups: {known}")
        chosen = [h for h in chosen if group in h.groups]
    if hosts:
        unknown = [n for n in hosts if n not in fleet.hosts]
        if unknown:
            raise ConfigError(
                f"{fleet.path}: unknown host(s) {', '.join(map(repr, unknown))}; "
                f"hosts: {', '.join(fleet.hosts)}"
            )
        wanted = set(hosts)
        outside = [n for n in hosts if group is not None and group not in fleet.hosts[n].groups]
        if outside:
            raise ConfigError(
                f"{fleet.path}: host(s) {', '.join(map(repr, outside))} not in group {group!r}"
            )
        chosen = [h for h in chosen if h.name in wanted]
    if not chosen:
        raise ConfigError(f"{fleet.path}: the selection matches no host")
    return chosen
