"""The model registry and the deployment log: versions, gate decisions, who serves an alias.

    reg = Registry(TraceStore("sqlite:///ownlm.db"))
    v = reg.register(ModelVersion("app-own", reg.next_version("app-own"), "runs/sft"))
    reg.record_gate(GateDecision(...))
    reg.deploy(Deployment(alias="app", arms={"strong": 0.9, "app-own-v1": 0.1}, ...))
    reg.rollback("app", reason="by hand")     # the routing before the newest one, again

A deployment is a row, never an update: the newest row per alias is what the gateway serves, the
older rows are the history that rollback restores from. Model versions change only `status`.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Sequence

from sqlalchemy import Connection, func, insert, select, update

from ownlm.errors import StoreError
from ownlm.store import tables as t
from ownlm.store.schema import VERSION_STATUSES, Deployment, GateDecision, ModelVersion
from ownlm.store.trace_store import DatabaseFailure, TraceStore

_REF = re.compile(r"^(?P<name>[^@\s]+)@(?P<version>\d+|latest|promoted)$")


def variant_name(name: str, version: int) -> str:
    """The gateway variant a registered version is served as: `name-v<version>`."""
    return f"{name}-v{version}"


class Registry:
    """Model versions, gate decisions and deployments in a TraceStore's database."""

    def __init__(self, store: TraceStore) -> None:
        self.store = store
        self.engine = store.engine

    # -- model versions ----------------------------------------------------------------------

    def next_version(self, name: str) -> int:
        """1 + the highest registered version of name (1 for a new name)."""
        mv = t.model_versions
        with self.engine.connect() as conn:
            top = conn.execute(select(func.max(mv.c.version)).where(mv.c.name == name)).scalar()
        return int(top or 0) + 1

    def register(self, version: ModelVersion) -> ModelVersion:
        """Add a version; (name, version) must be new."""
        self.store.add_model_version(version)
        return version

    def get(self, ref: str) -> ModelVersion:
        """A version by `name@3`, `name@latest` or `name@promoted` (the newest promoted one)."""
        m = _REF.match(ref)
        if m is None:
            raise StoreError(
                f"model reference {ref!r} is not name@version; use e.g. app-own@2, "
                "app-own@latest or app-own@promoted"
            )
        name, which = m["name"], m["version"]
        versions = self.store.list_model_versions(name)
        if which == "promoted":
            versions = [v for v in versions if v.status == "promoted"]
        elif which != "latest":
            versions = [v for v in versions if v.version == int(which)]
        if not versions:
            known = [f"{v.name}@{v.version} ({v.status})" for v in self.store.list_model_versions()]
            raise StoreError(
                f"no model version {ref} in the registry; registered: {', '.join(known) or 'none'}"
            )
        return versions[-1]

    def by_variant(self, variant: str) -> ModelVersion | None:
        """The version the gateway serves as `variant` (`name-v<version>`), or None."""
        for v in self.store.list_model_versions():
            if variant_name(v.name, v.version) == variant:
                return v
        return None

    def set_status(self, name: str, version: int, status: str) -> None:
        """Change a version's status (see VERSION_STATUSES)."""
        with self.engine.begin() as conn:
            _set_status(conn, name, version, status)

    def mark_promoted(self, name: str, version: int) -> None:
        """The version won: it becomes `promoted` and the name's promoted one `retired`, in one
        transaction (a crash between the two cannot leave two promoted or none)."""
        mv = t.model_versions
        with self.engine.begin() as conn:
            conn.execute(
                update(mv)
                .where(mv.c.name == name, mv.c.status == "promoted", mv.c.version != version)
                .values(status="retired")
            )
            _set_status(conn, name, version, "promoted")

    # -- gate decisions ----------------------------------------------------------------------

    def record_gate(self, decision: GateDecision) -> None:
        """Store a gate decision and set the version's status to approved or rejected."""
        status = "approved" if decision.promote else "rejected"
        with self.engine.begin() as conn:  # the decision and the status it sets, together
            conn.execute(insert(t.gate_decisions).values(**dataclasses.asdict(decision)))
            _set_status(conn, decision.name, decision.version, status)

    def gate_decisions(self, name: str | None = None) -> list[GateDecision]:
        """Decisions, oldest first."""
        gd = t.gate_decisions
        query = select(gd).order_by(gd.c.created_at)
        if name is not None:
            query = query.where(gd.c.name == name)
        with self.engine.connect() as conn:
            return [GateDecision(**r._asdict()) for r in conn.execute(query)]

    # -- deployments -------------------------------------------------------------------------

    def deploy(self, dep: Deployment, statuses: Sequence[tuple[str, int, str]] = ()) -> Deployment:
        """Append a deployment row; it becomes the alias's live routing. `statuses`: (name,
        version, status) set in the same transaction. Returns the row with its seq."""
        total = sum(dep.arms.values())
        if not dep.arms or abs(total - 1.0) > 1e-6:
            raise StoreError(f"deployment arms must share all traffic (sum 1), got {dep.arms}")
        return self._deploy(dep, statuses)

    def _deploy(self, dep: Deployment, statuses: Sequence[tuple[str, int, str]] = ()) -> Deployment:
        """Insert the row and set the versions' statuses, in one transaction."""
        row = dataclasses.asdict(dep)
        row.pop("seq")
        try:
            with self.engine.begin() as conn:
                seq = conn.execute(insert(t.deployments).values(**row)).inserted_primary_key[0]
                for status in statuses:
                    _set_status(conn, *status)
        except DatabaseFailure as err:
            raise StoreError(f"cannot write the deployment of {dep.alias!r}: {err}") from err
        return dataclasses.replace(dep, seq=int(seq))

    def deployments(self, alias: str | None = None) -> list[Deployment]:
        """Deployment rows, oldest first."""
        d = t.deployments
        query = select(d).order_by(d.c.seq)
        if alias is not None:
            query = query.where(d.c.alias == alias)
        with self.engine.connect() as conn:
            return [Deployment(**r._asdict()) for r in conn.execute(query)]

    def live(self) -> dict[str, Deployment]:
        """The newest deployment of every alias that has one."""
        return {d.alias: d for d in self.deployments()}

    def current(self, alias: str) -> Deployment | None:
        """The newest deployment of one alias, or None."""
        rows = self.deployments(alias)
        return rows[-1] if rows else None

    def rollback(self, alias: str, reason: str) -> Deployment:
        """Deploy again the routing that came before the newest one; mark its canary rolled back."""
        rows = self.deployments(alias)
        if len(rows) < 2:
            raise StoreError(
                f"nothing to roll back for {alias!r}: it has {len(rows)} deployment(s); "
                "rollback restores the routing before the newest one"
            )
        newest, before = rows[-1], rows[-2]
        canary = self.by_variant(newest.canary) if newest.canary is not None else None
        statuses = [(canary.name, canary.version, "rolled_back")] if canary is not None else []
        return self._deploy(
            dataclasses.replace(
                before, seq=0, created_at=time.time(), reason=f"rollback of #{newest.seq}: {reason}"
            ),
            statuses,
        )  # the restored routing and the canary's status, in one transaction


def _set_status(conn: Connection, name: str, version: int, status: str) -> None:
    if status not in VERSION_STATUSES:
        raise StoreError(f"unknown status {status!r}; use one of {', '.join(VERSION_STATUSES)}")
    mv = t.model_versions
    res = conn.execute(
        update(mv).where(mv.c.name == name, mv.c.version == version).values(status=status)
    )
    if not res.rowcount:
        raise StoreError(f"no model version {name}@{version} in the registry")
