"""TraceStore: read and write traces, feedback, experiments, model versions and API keys.

One class over SQLAlchemy Core for both back ends: `sqlite:///path.db` (WAL, the default, no
set-up) and `postgresql://user@host:port/db` (driven by psycopg 3). Every write method commits
before it returns; on SQLite the connection runs with `synchronous=FULL`, so a committed write
survives a crash of the process and of the machine. Writes of traces are batched by
`ownlm.store.writer.TraceWriter`, which decides when a trace counts as stored.

Every database error on the store's engine, from any method here or in the registry, becomes a
`DatabaseFailure` in one place (the engine's `handle_error` hook, `_as_failure`): a StoreError
whose message says what failed in plain words, never the SQL, its parameters or the host, and
whose `row_error` tells a row the database refuses for its values from a database that is
down, locked, full or slow. With `timeout_s` (the gateway's `store_timeout_s`) PostgreSQL cancels a
statement or lock wait that runs longer and connecting gives up after it; SQLite waits that long
for a lock (else 10 s). A server that hangs without answering at all (stopped, a dead link) is
bounded by the caller: `ownlm.store.writer` runs its writes with a deadline.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (
    Engine,
    Integer,
    and_,
    case,
    cast,
    create_engine,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError, StatementError

from ownlm.errors import StoreError
from ownlm.store import tables as t
from ownlm.store.schema import (
    ApiKey,
    ArmStats,
    Experiment,
    Feedback,
    ModelVersion,
    ServedModel,
    Trace,
)

# the endpoints whose traces are generations an app's users see: the report counts these (an
# embeddings call has no answer to rate)
GENERATION_ENDPOINTS = ("chat.completions", "responses")


class UnknownTraceError(StoreError):
    """Feedback names a trace id the store does not have."""

    http_status = 404


def _json_dumps(obj: Any) -> str:
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS).decode()


def engine_url(url: str) -> str:
    """Map a user's URL to the SQLAlchemy one: plain `postgresql://` uses the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///path` store URL; None for an in-memory or non-SQLite store."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url[len("sqlite:///") :])
    return None


def hash_key(secret: str) -> str:
    """sha256 hex of an API key secret: what the store keeps and looks keys up by."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass
class UsageTotals:
    """Chat traces of one (time bucket, variant, alias, upstream), summed by `usage_totals`."""

    bucket_start: float  # unix seconds, a multiple of the bucket size
    variant: str
    alias: str
    upstream: str
    requests: int
    errors: int  # status >= 400
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    rated: int  # traces with a thumbs or a score
    successes: int  # traces with a thumbs up or a score >= the threshold
    value_usd: float  # sum of feedback values given
    unvalued_successes: int  # successes whose feedback gave no value
    first_at: float  # created_at of the first and last trace in the group
    last_at: float
    unvalued_failures: int = 0  # rated traces that did not succeed and gave no value


class DatabaseFailure(StoreError):
    """The database failed a statement or a connection; the message is `store_failure`'s."""

    def __init__(self, reason: str, *, row_error: bool, detail: str) -> None:
        super().__init__(reason)
        self.row_error = row_error  # refused for the values: the same row fails again
        self.detail = detail  # the driver's first line, for the operator's log


class TraceStore:
    """The store's tables behind plain methods that take and return `schema` rows."""

    def __init__(self, url: str, timeout_s: float | None = None) -> None:
        self.url = url
        self.timeout_s = timeout_s
        try:
            self.engine: Engine = create_engine(
                engine_url(url),
                json_serializer=_json_dumps,
                json_deserializer=orjson.loads,
                connect_args=_connect_args(url, timeout_s),
            )
        except (SQLAlchemyError, ImportError, ValueError) as err:
            raise StoreError(
                f"cannot use store url {url!r}: {err}; "
                "use sqlite:///path/to/ownlm.db or postgresql://user@host:port/dbname"
            ) from err
        if self.engine.dialect.name == "sqlite":
            busy_ms = int((timeout_s or SQLITE_BUSY_S) * 1000)
            event.listen(self.engine, "connect", lambda conn, _: _sqlite_pragmas(conn, busy_ms))
        event.listen(self.engine, "handle_error", _as_failure)
        try:
            with self.engine.begin() as conn:
                if self.engine.dialect.name == "postgresql":
                    # a migration may rewrite a big table: no statement timeout for it
                    conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
                self.version = t.migrate(conn, time.time())
        except DatabaseFailure as err:
            raise StoreError(f"cannot open the store at {url!r}: {err.detail}") from err

    def close(self) -> None:
        """Release all connections."""
        self.engine.dispose()

    # -- traces ------------------------------------------------------------------------------

    def write_traces(self, rows: list[Trace], *, skip_existing: bool = False) -> None:
        """Insert a batch of traces in one transaction; `skip_existing`: rows whose trace id is
        already stored are left out (a replayed spill), not an error."""
        if not rows:
            return
        stmt = insert(t.traces)
        if skip_existing:
            dialect = self.engine.dialect.name
            upsert = sqlite_insert if dialect == "sqlite" else postgresql_insert
            stmt = upsert(t.traces).on_conflict_do_nothing(index_elements=["trace_id"])
        with self.engine.begin() as conn:
            # vars(), not dataclasses.asdict: asdict deep-copies request and response (10x slower)
            conn.execute(stmt, [vars(r) for r in rows])

    def get_trace(self, trace_id: str) -> Trace | None:
        """The trace with this id, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(t.traces).where(t.traces.c.trace_id == trace_id)).first()
        return Trace(**row._asdict()) if row is not None else None

    def list_traces(self, limit: int = 100, since: float | None = None) -> list[Trace]:
        """Traces in creation order, oldest first, optionally only those created after `since`."""
        query = select(t.traces).order_by(t.traces.c.created_at).limit(limit)
        if since is not None:
            query = query.where(t.traces.c.created_at > since)
        with self.engine.connect() as conn:
            return [Trace(**r._asdict()) for r in conn.execute(query)]

    def iter_traces(
        self, since: float | None = None, until: float | None = None, page_size: int = 1000
    ) -> Iterator[Trace]:
        """All traces with since <= created_at < until, oldest first, read page by page.

        Pages are keyed on (created_at, trace_id), not OFFSET, so each page is an index seek and
        traces written during the read do not shift later pages.
        """
        tr = t.traces
        query = select(tr).order_by(tr.c.created_at, tr.c.trace_id).limit(page_size)
        if since is not None:
            query = query.where(tr.c.created_at >= since)
        if until is not None:
            query = query.where(tr.c.created_at < until)
        after: tuple[float, str] | None = None
        while True:
            page_query = query
            if after is not None:
                page_query = query.where(
                    or_(
                        tr.c.created_at > after[0],
                        and_(tr.c.created_at == after[0], tr.c.trace_id > after[1]),
                    )
                )
            with self.engine.connect() as conn:
                page = [Trace(**r._asdict()) for r in conn.execute(page_query)]
            yield from page
            if len(page) < page_size:
                return
            after = (page[-1].created_at, page[-1].trace_id)

    def count_traces(self) -> int:
        """Number of stored traces."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(t.traces)).scalar_one())

    def spend_by_key(self) -> dict[str, float]:
        """Total cost_usd of stored traces per API key id (rebuilds budgets after a restart)."""
        query = (
            select(t.traces.c.key_id, func.sum(t.traces.c.cost_usd))
            .where(t.traces.c.key_id.is_not(None))
            .group_by(t.traces.c.key_id)
        )
        with self.engine.connect() as conn:
            return {k: float(v or 0.0) for k, v in conn.execute(query)}

    # -- usage figures (read only, for ownlm.report) ------------------------------------------

    def usage_totals(
        self,
        *,
        bucket_s: float,
        success_min_score: float,
        since: float | None = None,
        until: float | None = None,
    ) -> list[UsageTotals]:
        """Chat traces summed per (time bucket, variant, alias, upstream), feedback joined in SQL.

        A trace succeeds when any of its feedback rows is a thumbs up or has a score >=
        `success_min_score`; it is rated when any row has thumbs or a score. `value_usd` sums the
        feedback `value`s given; `unvalued_successes` and `unvalued_failures` count rated traces
        that succeeded or failed with no value given.
        """
        tr, fb = t.traces, t.feedback
        per_trace = (
            select(
                fb.c.trace_id,
                func.max(
                    case((fb.c.thumbs.is_not(None) | fb.c.score.is_not(None), 1), else_=0)
                ).label("rated"),
                func.max(
                    case(((fb.c.thumbs > 0) | (fb.c.score >= success_min_score), 1), else_=0)
                ).label("ok"),
                func.sum(fb.c.value).label("value"),
                func.count(fb.c.value).label("n_value"),
            )
            .group_by(fb.c.trace_id)
            .subquery()
        )
        scaled = tr.c.created_at / bucket_s
        # created_at >= 0, so SQLite's truncating cast is a floor; PostgreSQL's cast rounds
        index = func.floor(scaled) if self.engine.dialect.name != "sqlite" else scaled
        bucket = (cast(index, Integer) * bucket_s).label("bucket")
        ok = func.coalesce(per_trace.c.ok, 0)
        failed = case(((func.coalesce(per_trace.c.rated, 0) == 1) & (ok == 0), 1), else_=0)
        unvalued = func.coalesce(per_trace.c.n_value, 0) == 0
        keys = (bucket, tr.c.variant, tr.c.alias, tr.c.upstream)
        query = (
            select(
                *keys,
                func.count(),
                func.sum(case((tr.c.status >= 400, 1), else_=0)),
                func.sum(tr.c.prompt_tokens),
                func.sum(tr.c.completion_tokens),
                func.sum(tr.c.cost_usd),
                func.sum(func.coalesce(per_trace.c.rated, 0)),
                func.sum(ok),
                func.coalesce(func.sum(per_trace.c.value), 0.0),
                func.sum(case((unvalued, ok), else_=0)),
                func.min(tr.c.created_at),
                func.max(tr.c.created_at),
                func.sum(case((unvalued, failed), else_=0)),
            )
            .select_from(tr.outerjoin(per_trace, per_trace.c.trace_id == tr.c.trace_id))
            .where(tr.c.endpoint.in_(GENERATION_ENDPOINTS))
            .group_by(*keys)
            .order_by(*keys)
        )
        if since is not None:
            query = query.where(tr.c.created_at >= since)
        if until is not None:
            query = query.where(tr.c.created_at < until)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            UsageTotals(
                float(r[0]),
                r[1],
                r[2],
                r[3],
                int(r[4]),
                int(r[5]),
                int(r[6]),
                int(r[7]),
                float(r[8]),
                int(r[9]),
                int(r[10]),
                float(r[11]),
                int(r[12]),
                float(r[13]),
                float(r[14]),
                int(r[15]),
            )
            for r in rows
        ]

    def latencies(
        self, since: float | None = None, until: float | None = None
    ) -> list[tuple[str, str, float]]:
        """(variant, alias, latency_ms) of every chat or Responses trace in the window."""
        tr = t.traces
        query = select(tr.c.variant, tr.c.alias, tr.c.latency_ms).where(
            tr.c.endpoint.in_(GENERATION_ENDPOINTS)
        )
        if since is not None:
            query = query.where(tr.c.created_at >= since)
        if until is not None:
            query = query.where(tr.c.created_at < until)
        with self.engine.connect() as conn:
            return [(v, a, float(ms)) for v, a, ms in conn.execute(query)]

    # -- feedback ----------------------------------------------------------------------------

    def add_feedback(self, fb: Feedback, made_by: str | None = None) -> None:
        """Commit one feedback row; when this returns, it is durable. The trace must exist and,
        with `made_by`, have been made by that key id (else it is reported as unknown, so a key
        cannot probe for other keys' traces)."""
        with self.engine.begin() as conn:
            found = conn.execute(
                select(t.traces.c.key_id).where(t.traces.c.trace_id == fb.trace_id)
            ).first()
            if found is None or (made_by is not None and found.key_id != made_by):
                mine = " made with this API key" if made_by is not None else ""
                raise UnknownTraceError(
                    f"no trace with id {fb.trace_id!r}{mine}; use the x-ownlm-trace-id "
                    "header of a response from this gateway"
                )
            conn.execute(insert(t.feedback).values(**dataclasses.asdict(fb)))

    def list_feedback(self, trace_id: str | None = None) -> list[Feedback]:
        """Feedback rows, oldest first, optionally for one trace."""
        query = select(t.feedback).order_by(t.feedback.c.created_at)
        if trace_id is not None:
            query = query.where(t.feedback.c.trace_id == trace_id)
        with self.engine.connect() as conn:
            return [Feedback(**r._asdict()) for r in conn.execute(query)]

    # -- experiments -------------------------------------------------------------------------

    def save_experiment(self, exp: Experiment) -> None:
        """Insert or replace an experiment definition; the arms its test eliminated are kept
        when the arms are the same (a restart, or the same deployment applied again)."""
        ex = t.experiments
        with self.engine.begin() as conn:
            old = conn.execute(select(ex.c.arms, ex.c.eliminated).where(ex.c.name == exp.name))
            row = old.first()
            if exp.eliminated is None and row is not None and list(row.arms) == list(exp.arms):
                exp = dataclasses.replace(exp, eliminated=row.eliminated)
            conn.execute(ex.delete().where(ex.c.name == exp.name))
            conn.execute(insert(ex).values(**dataclasses.asdict(exp)))

    def set_eliminated(self, name: str, arms: list[str]) -> None:
        """Record the arms an experiment's test has eliminated."""
        ex = t.experiments
        with self.engine.begin() as conn:
            conn.execute(update(ex).where(ex.c.name == name).values(eliminated=sorted(arms)))

    def list_experiments(self) -> list[Experiment]:
        """All experiments, by name."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.experiments).order_by(t.experiments.c.name))
            return [Experiment(**r._asdict()) for r in rows]

    def arm_stats(self, experiment: str) -> list[ArmStats]:
        """Per-arm trace counts, cost and feedback totals of one experiment, by arm name."""
        tr, fb = t.traces, t.feedback
        traced = (
            select(tr.c.arm, func.count(), func.coalesce(func.sum(tr.c.cost_usd), 0.0))
            .where(tr.c.experiment == experiment, tr.c.arm.is_not(None))
            .group_by(tr.c.arm)
        )
        reward = func.coalesce(
            fb.c.score, case((fb.c.thumbs > 0, 1.0), (fb.c.thumbs < 0, 0.0), else_=None)
        )
        rated = (
            select(
                tr.c.arm,
                func.count(fb.c.feedback_id),
                func.coalesce(func.sum(reward), 0.0),
                func.coalesce(func.sum(reward * reward), 0.0),
                func.coalesce(func.sum(case((fb.c.thumbs > 0, 1), else_=0)), 0),
                func.coalesce(func.sum(case((fb.c.thumbs < 0, 1), else_=0)), 0),
            )
            .select_from(fb.join(tr, fb.c.trace_id == tr.c.trace_id))
            .where(tr.c.experiment == experiment, tr.c.arm.is_not(None))
            .group_by(tr.c.arm)
        )
        with self.engine.connect() as conn:
            counts = {arm: (int(n), float(c)) for arm, n, c in conn.execute(traced)}
            feedback = {r[0]: r[1:] for r in conn.execute(rated)}
        out = []
        for arm in sorted(counts):
            n, cost = counts[arm]
            nf, rs, rsq, ok, bad = feedback.get(arm, (0, 0.0, 0.0, 0, 0))
            out.append(
                ArmStats(
                    experiment, arm, n, int(nf), float(rs), float(rsq), int(ok), int(bad), cost
                )
            )
        return out

    # -- model registry ----------------------------------------------------------------------

    def add_model_version(self, mv: ModelVersion) -> None:
        """Register a model version; (name, version) must be new."""
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(t.model_versions).values(**dataclasses.asdict(mv)))
        except DatabaseFailure as err:
            if not err.row_error:
                raise
            raise StoreError(
                f"model version {mv.name} v{mv.version} is already registered; "
                "register the next version number"
            ) from err

    def list_model_versions(self, name: str | None = None) -> list[ModelVersion]:
        """Registered versions, by name then version."""
        mv = t.model_versions
        query = select(mv).order_by(mv.c.name, mv.c.version)
        if name is not None:
            query = query.where(mv.c.name == name)
        with self.engine.connect() as conn:
            return [
                ModelVersion(**{**r._asdict(), "lineage": r.lineage or {}})
                for r in conn.execute(query)
            ]

    # -- served models -----------------------------------------------------------------------

    def write_served_models(self, models: list[ServedModel]) -> None:
        """Record the models the gateway serves now (replacing what was recorded)."""
        with self.engine.begin() as conn:
            conn.execute(t.served_models.delete())
            if models:
                conn.execute(insert(t.served_models), [dataclasses.asdict(m) for m in models])

    def served_models(self) -> dict[str, ServedModel]:
        """The models the gateway last recorded, by name (empty if no gateway ran here)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.served_models).order_by(t.served_models.c.name))
            return {r.name: ServedModel(**r._asdict()) for r in rows}

    # -- API keys ----------------------------------------------------------------------------

    def create_key(
        self, name: str, rate_per_s: float, burst: int, budget_usd: float | None
    ) -> tuple[ApiKey, str]:
        """Create a key; returns the stored row and the secret (shown once, never stored)."""
        secret = "sk-ownlm-" + secrets.token_urlsafe(24)
        key = ApiKey(
            key_id=secrets.token_hex(8),
            key_sha256=hash_key(secret),
            name=name,
            rate_per_s=rate_per_s,
            burst=burst,
            budget_usd=budget_usd,
        )
        with self.engine.begin() as conn:
            conn.execute(insert(t.api_keys).values(**dataclasses.asdict(key)))
        return key, secret

    def list_keys(self) -> list[ApiKey]:
        """All keys (hashes only), oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.api_keys).order_by(t.api_keys.c.created_at))
            return [ApiKey(**r._asdict()) for r in rows]

    def disable_key(self, key_id: str) -> bool:
        """Disable a key; False if no such key."""
        with self.engine.begin() as conn:
            res = conn.execute(
                update(t.api_keys).where(t.api_keys.c.key_id == key_id).values(disabled=True)
            )
            return bool(res.rowcount)


SQLITE_BUSY_S = 10.0


def _sqlite_pragmas(dbapi_conn: Any, busy_ms: int) -> None:
    # WAL lets readers run beside the writer thread; FULL makes every commit durable (fsync of
    # the WAL), which the feedback acknowledgement relies on. busy_timeout: wait, don't fail,
    # when the trace writer and a feedback write meet.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute(f"PRAGMA busy_timeout={busy_ms}")
    cur.close()


_REASONS = (
    ("locked", "the database is locked"),
    ("readonly", "the database is read-only"),
    ("read-only", "the database is read-only"),
    ("disk", "the disk is full or failing"),
    ("full", "the disk is full or failing"),
    ("statement timeout", "the database did not answer in time"),
    ("timeout", "the database did not answer in time"),
    ("connect", "the database cannot be reached"),
    ("closed", "the database cannot be reached"),
    ("terminat", "the database cannot be reached"),
    ("shut", "the database cannot be reached"),
)


def _connect_args(url: str, timeout_s: float | None) -> dict[str, Any]:
    """PostgreSQL: give up connecting after timeout_s; the server cancels a statement (or a
    lock wait) that runs longer."""
    if timeout_s is None or not engine_url(url).startswith("postgresql"):
        return {}
    ms = max(1, int(timeout_s * 1000))
    return {
        "connect_timeout": max(1, round(timeout_s)),
        "options": f"-c statement_timeout={ms} -c lock_timeout={ms}",
    }


def _as_failure(ctx: ExceptionContext) -> DatabaseFailure:
    """The engine's handle_error hook: every database error becomes a DatabaseFailure."""
    err = ctx.sqlalchemy_exception or ctx.original_exception
    return database_failure(err)


def database_failure(err: BaseException) -> DatabaseFailure:
    """The DatabaseFailure that stands for a driver or SQLAlchemy error."""
    return DatabaseFailure(store_failure(err), row_error=is_row_error(err), detail=first_line(err))


def is_row_error(err: BaseException) -> bool:
    """True when the database refused a statement for the values in it (too long, NUL, a
    duplicate key, a value that cannot be encoded), not because it is unreachable or busy."""
    if isinstance(err, DataError | IntegrityError):
        return True
    # StatementError but not DBAPIError: it failed while binding the values, before the database
    return isinstance(err, StatementError) and not isinstance(err, DBAPIError)


def first_line(err: BaseException) -> str:
    """The driver's message without the SQL and parameters SQLAlchemy appends (may hold PII)."""
    orig = getattr(err, "orig", None)
    text = str(orig) if orig is not None else str(err)
    return text.strip().split("\n", 1)[0][:300]


def store_failure(err: BaseException) -> str:
    """What failed, in words fit for /health and error bodies: the driver's error class and a
    plain reason, never the SQL, its parameters or the database's address."""
    orig = getattr(err, "orig", None) or err
    text = str(orig).lower()
    reason = next((r for needle, r in _REASONS if needle in text), "the database refused the write")
    return f"{type(orig).__name__}: {reason}"
