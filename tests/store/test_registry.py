"""Registry on SQLite and a real PostgreSQL: versions, references, gate records, deployments,
rollback; and the v1 -> v2 migration of a database written before the registry existed."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from ownlm.errors import StoreError
from ownlm.store.registry import Registry, variant_name
from ownlm.store.schema import Deployment, GateDecision, ModelVersion
from ownlm.store.trace_store import TraceStore


@pytest.fixture
def reg(store_url: str) -> Iterator[Registry]:
    store = TraceStore(store_url)
    yield Registry(store)
    store.close()


def test_versions_references_and_statuses(reg: Registry) -> None:
    assert reg.next_version("own") == 1
    reg.register(ModelVersion("own", 1, "/runs/a", parent="smollm2-135m", lineage={"cycle": 1}))
    reg.register(ModelVersion("own", 2, "/runs/b", parent="own@1"))
    assert reg.next_version("own") == 3
    assert reg.get("own@latest").path == "/runs/b"
    assert reg.get("own@1").lineage == {"cycle": 1}
    with pytest.raises(StoreError, match=r"no model version own@promoted .*own@1 \(candidate\)"):
        reg.get("own@promoted")
    with pytest.raises(StoreError, match="not name@version"):
        reg.get("own")
    with pytest.raises(StoreError, match="already registered"):
        reg.register(ModelVersion("own", 2, "/runs/c"))
    reg.record_gate(GateDecision("own", 1, "smollm2-135m", True, ["pass"], {"domain_diff": 0.2}))
    assert reg.get("own@1").status == "approved"
    assert [d.metrics for d in reg.gate_decisions("own")] == [{"domain_diff": 0.2}]
    reg.set_status("own", 1, "promoted")
    assert reg.get("own@promoted").version == 1
    with pytest.raises(StoreError, match="unknown status"):
        reg.set_status("own", 1, "shipped")
    with pytest.raises(StoreError, match="no model version own@9"):
        reg.set_status("own", 9, "retired")


def test_deployments_and_rollback(reg: Registry) -> None:
    reg.register(ModelVersion("own", 1, "/runs/a", status="canary"))
    with pytest.raises(StoreError, match="nothing to roll back"):
        reg.rollback("app", "x")
    with pytest.raises(StoreError, match="sum 1"):
        reg.deploy(Deployment("app", {"strong": 0.5}, "strong", "bad"))
    first = reg.deploy(Deployment("app", {"strong": 1.0}, "strong", "baseline"))
    canary = variant_name("own", 1)
    second = reg.deploy(
        Deployment(
            "app",
            {"strong": 0.9, canary: 0.1},
            "strong",
            "canary",
            models={canary: "/runs/a"},
            experiment={"metric": "success_rate"},
            canary=canary,
        )
    )
    assert second.seq > first.seq
    assert reg.current("app") == second
    back = reg.rollback("app", "by hand")
    assert back.arms == {"strong": 1.0} and back.reason == f"rollback of #{second.seq}: by hand"
    assert reg.live()["app"].seq == back.seq
    assert reg.get("own@1").status == "rolled_back"
    assert [d.seq for d in reg.deployments("app")] == [first.seq, second.seq, back.seq]


def test_a_version_1_database_migrates(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.executescript(
        """
        CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at FLOAT NOT NULL);
        INSERT INTO schema_version VALUES (1, 0);
        CREATE TABLE model_versions (name VARCHAR(200), version INTEGER, path TEXT NOT NULL,
            base_model VARCHAR(200) NOT NULL, status VARCHAR(32) NOT NULL, metrics JSON NOT NULL,
            created_at FLOAT NOT NULL, PRIMARY KEY (name, version));
        INSERT INTO model_versions VALUES ('own', 1, '/old', '', 'promoted', '{}', 0);
        """
    )
    con.commit()
    con.close()
    store = TraceStore(f"sqlite:///{db}")
    reg = Registry(store)
    old = reg.get("own@1")
    assert (old.path, old.parent, old.lineage) == ("/old", None, {})
    reg.deploy(Deployment("app", {"strong": 1.0}, "strong", "after the migration"))
    assert reg.current("app") is not None
    store.close()


def test_promoting_retires_the_old_version_in_the_same_transaction(reg: Registry) -> None:
    reg.register(ModelVersion("own", 1, "/runs/a", status="promoted"))
    reg.register(ModelVersion("own", 2, "/runs/b", status="canary"))
    with pytest.raises(StoreError, match="no model version own@3"):
        reg.mark_promoted("own", 3)  # fails after the retire statement: it is rolled back too
    assert [v.status for v in reg.store.list_model_versions("own")] == ["promoted", "canary"]
    reg.mark_promoted("own", 2)
    assert [v.status for v in reg.store.list_model_versions("own")] == ["retired", "promoted"]
