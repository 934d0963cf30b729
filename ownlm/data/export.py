"""`ownlm export`: turn stored traces into SFT chats, preference pairs and RL prompt sets.

    ownlm export --config export.yaml --set out_dir=datasets/v2 --set 'kinds=[sft,rl]'

Reads top to bottom: open the store → read traces oldest first, dropping those a filter rejects
or that cannot be written faithfully → redact PII in every kept text → build the rows of each
kind → drop exact and near duplicates, first by time kept → split train/eval by session →
write `<kind>_train.jsonl`, `<kind>_eval.jsonl` and, last, `manifest.json`. Each file is written
to a temporary name and renamed, and an old manifest is removed first, so a directory whose
manifest exists holds a complete export (the manifest has the sha256 of every file). Row formats:
`ownlm/data/formats.py` and docs/export.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from tqdm import tqdm

import ownlm
from ownlm.config import Config
from ownlm.data.dedupe import DedupeIndex, normalize_text
from ownlm.data.filters import (
    FilterConfig,
    drop_reason,
    passes_feedback,
    trace_reward,
    unix_seconds,
)
from ownlm.data.formats import (
    Message,
    SkipTrace,
    answer_message,
    dedupe_text,
    map_texts,
    message_text,
    prompt_messages,
    request_tools,
    up_to_last_user,
)
from ownlm.data.redact import RedactConfig, Redactions, redact_pii
from ownlm.data.split import assign_sides, group_key
from ownlm.errors import DataError, StoreError
from ownlm.jsonl import PromptRow
from ownlm.store.schema import Feedback, Trace
from ownlm.store.trace_store import TraceStore, sqlite_path

Kind = Literal["sft", "pairs", "rl"]
# Keys whose string values are structure, not text a user wrote: never redacted (a tool call
# id can look like a secret, and redacting it would unlink the call from its result).
_STRUCTURE_KEYS = frozenset({"role", "type", "id", "tool_call_id"})


class DedupeConfig(Config):
    """Duplicate removal within each kind; the first trace by time is kept."""

    near_threshold: float | None = Field(
        0.8, gt=0.0, le=1.0, description="similarity from which texts are duplicates; null: exact"
    )
    sft_on: Literal["prompt", "prompt_and_answer"] = Field(
        "prompt", description="what must repeat for an SFT chat to be a duplicate"
    )


class PairsConfig(Config):
    """Preference pairs: best and worst rated answer of each prompt."""

    min_reward_gap: float = Field(
        0.0, ge=0.0, description="chosen reward - rejected reward must exceed this"
    )


class RLConfig(Config):
    """RL prompt sets: every row gets this verifier name and the reference from metadata."""

    verifier: str = Field(
        "", description="e.g. reasoning_gym:chain_sum; required when kinds has rl"
    )
    answer_key: str | None = Field(
        "answer", description="trace.metadata key holding the reference answer"
    )


class ExportConfig(Config):
    """Everything `ownlm export` does; see docs/export.md."""

    store_url: str = Field("sqlite:///ownlm.db", description="where the traces are")
    out_dir: str = Field("datasets/export", description="the JSONL files go here")
    kinds: list[Kind] = Field(
        default_factory=lambda: ["sft", "pairs"],
        min_length=1,
        description="sft: chats; pairs: preference pairs; rl: prompt sets with a verifier",
    )
    filters: FilterConfig = Field(FilterConfig(), description="which traces are exported")
    dedupe: DedupeConfig | None = Field(DedupeConfig(), description="null: keep duplicates")
    redact: RedactConfig | None = Field(RedactConfig(), description="null: write texts as stored")
    eval_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="share held out for eval (grouped, so related traces stay on one side)",
    )
    seed: int = Field(0, description="of the held-out split")
    pairs: PairsConfig = PairsConfig()
    rl: RLConfig = RLConfig()

    @model_validator(mode="after")
    def _check_kinds(self) -> ExportConfig:
        if len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"kinds lists a kind twice: {self.kinds}; name each once")
        if "rl" in self.kinds and not self.rl.verifier:
            raise ValueError(
                "kinds has 'rl' but rl.verifier is empty; set it, e.g. rl.verifier="
                "reasoning_gym:chain_sum"
            )
        return self


class ExportSummary(BaseModel):
    """What an export wrote; also the content of `manifest.json`."""

    out_dir: str
    store_url: str
    created_at: str
    ownlm_version: str
    traces_read: int
    time_range: dict[str, str | None]
    counts: dict[str, dict[str, int]]
    dropped: dict[str, dict[str, int]]
    redactions: dict[str, int]
    files: dict[str, dict[str, Any]]
    config: dict[str, Any]


@dataclass
class _Usable:
    """A trace that passed the filters, its texts normalised and redacted."""

    trace: Trace
    prompt: list[Message]
    answer: Message
    tools: list[dict[str, Any]] | None
    feedback: list[Feedback]
    reference: str | None


@dataclass
class _Row:
    kind: Kind
    data: dict[str, Any]
    dedupe_text: str
    keys: list[str]  # group keys of the traces it came from


def public_url(url: str) -> str:
    """The store URL with any password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _open_store(url: str) -> TraceStore:
    # An export only reads: a mistyped SQLite path must not create an empty store.
    path = sqlite_path(url)
    if path is not None:
        if not path.is_file():
            raise StoreError(
                f"no store file at {path} (store_url {url!r}); pass the database the gateway "
                "writes, e.g. sqlite:///ownlm.db"
            )
    return TraceStore(url)


def _check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".probe-"):
            pass
    except OSError as err:
        raise DataError(
            f"cannot write to out_dir {out_dir}: {err.strerror}; pick a writable directory"
        ) from err


def _write_atomic(path: Path, text: str) -> str:
    """Write text to path via a temporary file and rename; returns its sha256."""
    data = text.encode()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"cannot write {path}: {err.strerror}; free space or pick another out_dir "
            "(no manifest.json was written, so the directory is not a complete export)"
        ) from err
    return hashlib.sha256(data).hexdigest()


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts is not None else None


def _fmt_counts(counts: Counter[str]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.most_common()) or "none"


@dataclass
class _Drops:
    """What an export left out and why, per step (the manifest's `dropped`)."""

    filter: Counter[str] = field(default_factory=Counter)
    unusable: Counter[str] = field(default_factory=Counter)
    feedback: Counter[str] = field(default_factory=Counter)
    dedupe: Counter[str] = field(default_factory=Counter)


def export(cfg: ExportConfig) -> ExportSummary:
    """Write the datasets of cfg.kinds from the store to cfg.out_dir; returns the manifest.

    read the usable traces → build the rows of each kind → drop duplicates → split and write.
    """
    out_dir = Path(cfg.out_dir)
    _check_writable(out_dir)
    drops, tally = _Drops(), Redactions()
    read, usable = read_usable(cfg, drops, tally)
    rows = build_rows(usable, cfg, drops)
    if cfg.dedupe is not None:
        rows = drop_duplicates(rows, cfg.dedupe, cfg.kinds, cfg.seed, drops)
    counts, lines = split_rows(rows, cfg, len(usable), drops)
    files = write_files(out_dir, lines)
    used_times = [u.trace.created_at for u in usable]
    summary = ExportSummary(
        out_dir=str(out_dir),
        store_url=public_url(cfg.store_url),
        created_at=_iso(time.time()) or "",
        ownlm_version=ownlm.__version__,
        traces_read=read,
        time_range={"first": _iso(min(used_times)), "last": _iso(max(used_times))},
        counts=counts,
        dropped={k: dict(v) for k, v in vars(drops).items()},
        redactions={"texts_changed": tally.texts_changed, **tally.by_label},
        files=files,
        config=cfg.model_dump(mode="json", exclude={"store_url"}),
    )
    _write_atomic(out_dir / "manifest.json", summary.model_dump_json(indent=2) + "\n")
    return summary


def read_usable(cfg: ExportConfig, drops: _Drops, tally: Redactions) -> tuple[int, list[_Usable]]:
    """Traces oldest first that pass the filters and can be written faithfully, their texts
    normalised and redacted; (traces read, usable)."""
    store = _open_store(cfg.store_url)
    try:
        total = store.count_traces()
        if total == 0:
            raise DataError(
                f"the store {public_url(cfg.store_url)} has no traces; send traffic through "
                "the gateway (ownlm serve) first"
            )
        feedback: dict[str, list[Feedback]] = defaultdict(list)
        for fb in store.list_feedback():
            feedback[fb.trace_id].append(fb)

        def redact(obj: Any) -> Any:
            if cfg.redact is None:
                return obj
            redact_cfg = cfg.redact
            return map_texts(
                obj, lambda s: redact_pii(s, redact_cfg, tally), skip_keys=_STRUCTURE_KEYS
            )

        since = unix_seconds(cfg.filters.since) if cfg.filters.since else None
        until = unix_seconds(cfg.filters.until) if cfg.filters.until else None
        read, usable = 0, []
        earlier: dict[str, list[Message]] = {}  # Responses turns: trace id -> prompt + answer
        traces = store.iter_traces(since=since, until=until)
        for trace in tqdm(traces, total=total, desc="export", unit="trace", disable=None):
            read += 1
            reason = drop_reason(trace, cfg.filters)
            if reason is not None and trace.endpoint != "responses":
                drops.filter[reason] += 1
                continue
            try:
                prompt, answer = prompt_messages(trace, earlier), answer_message(trace)
            except SkipTrace as skip:
                if reason is None:
                    drops.unusable[skip.args[0]] += 1
                else:
                    drops.filter[reason] += 1
                continue
            if trace.endpoint == "responses" and trace.request.get("store") is not False:
                own = prompt[1:] if prompt and prompt[0]["role"] == "system" else prompt
                if trace.request.get("instructions"):
                    earlier[trace.trace_id] = [*own, answer]  # instructions do not carry over
                else:
                    earlier[trace.trace_id] = [*prompt, answer]
            if reason is not None:  # read for a later turn's conversation, not exported
                drops.filter[reason] += 1
                continue
            reference = trace.metadata.get(cfg.rl.answer_key) if cfg.rl.answer_key else None
            usable.append(
                _Usable(
                    trace=trace,
                    prompt=redact(prompt),
                    answer=redact(answer),
                    tools=redact(request_tools(trace)),
                    feedback=feedback.get(trace.trace_id, []),
                    reference=redact(str(reference)) if reference is not None else None,
                )
            )
    finally:
        store.close()
    if total > read:
        drops.filter["time_range"] = total - read
    if not usable:
        raise DataError(
            f"no trace left to export: {total} traces in the store; dropped by filters "
            f"({_fmt_counts(drops.filter)}), unusable ({_fmt_counts(drops.unusable)}); "
            "loosen the filters"
        )
    return read, usable


def build_rows(usable: list[_Usable], cfg: ExportConfig, drops: _Drops) -> list[_Row]:
    """The rows of each kind in cfg.kinds, in trace time order within a kind."""
    rows: list[_Row] = []
    # A later turn of a conversation sends the earlier turns (and their answers) as its prompt:
    # its SFT row holds the earlier rows whole, so with dedupe on those are dropped.
    within_later_prompt = {
        normalize_text(message_text(u.prompt[: i + 1]))
        for u in usable
        if passes_feedback(u.feedback, cfg.filters.feedback)
        for i, m in enumerate(u.prompt)
        if m["role"] == "assistant"
    }
    for kind in cfg.kinds:
        if kind == "pairs":
            rows.extend(_pair_rows(usable, cfg.pairs.min_reward_gap))
            continue
        for u in usable:
            if not passes_feedback(u.feedback, cfg.filters.feedback):
                drops.feedback[kind] += 1
                continue
            row = (
                _sft_row(u, cfg, within_later_prompt, drops)
                if kind == "sft"
                else _rl_row(u, cfg, drops)
            )
            if row is not None:
                rows.append(row)
    return rows


def _sft_row(u: _Usable, cfg: ExportConfig, within_later: set[str], drops: _Drops) -> _Row | None:
    chat = [*u.prompt, u.answer]
    if cfg.dedupe is not None and normalize_text(message_text(chat)) in within_later:
        drops.dedupe["sft_in_later_turn"] += 1
        return None
    data: dict[str, Any] = {"messages": chat}
    if u.tools is not None:
        data["tools"] = u.tools
    text = dedupe_text(u.prompt)
    if cfg.dedupe is not None and cfg.dedupe.sft_on == "prompt_and_answer":
        text = dedupe_text(chat)
    return _Row("sft", data, text, [group_key(u.trace)])


def _rl_row(u: _Usable, cfg: ExportConfig, drops: _Drops) -> _Row | None:
    try:
        messages = up_to_last_user(u.prompt)
    except SkipTrace as skip:
        drops.unusable[f"rl_{skip.args[0]}"] += 1
        return None
    row = PromptRow(
        id=u.trace.trace_id,
        messages=messages,
        answer=u.reference,
        verifier=cfg.rl.verifier,
        metadata={
            "alias": u.trace.alias,
            "created_at": u.trace.created_at,
            "tags": list(u.trace.tags),
            # what serves the app today: the gate scores it against the candidate
            "served_variant": u.trace.variant,
            "served_answer": u.answer.get("content") or "",
        },
    )
    return _Row("rl", row.model_dump(), dedupe_text(messages), [group_key(u.trace)])


def drop_duplicates(
    rows: list[_Row], dedupe: DedupeConfig, kinds: list[Kind], seed: int, drops: _Drops
) -> list[_Row]:
    """Exact and near duplicates within each kind; the first by time is kept."""
    indexes = {k: DedupeIndex(dedupe.near_threshold, seed) for k in kinds}
    kept = []
    for row in rows:
        verdict = indexes[row.kind].check_and_add(row.dedupe_text)
        if verdict == "new":
            kept.append(row)
        else:
            drops.dedupe[f"{row.kind}_{verdict}"] += 1
    return kept


def split_rows(
    rows: list[_Row], cfg: ExportConfig, n_usable: int, drops: _Drops
) -> tuple[dict[str, dict[str, int]], dict[str, list[str]]]:
    """Train/eval sides by one union of session groups across all kinds (a session has one
    side); (counts per kind and side, JSON lines per file name)."""
    sides = assign_sides([r.keys for r in rows], cfg.seed, cfg.eval_fraction)
    counts = {k: {"train": 0, "eval": 0} for k in cfg.kinds}
    lines: dict[str, list[str]] = {f"{k}_{s}.jsonl": [] for k in cfg.kinds for s in counts[k]}
    for row, side in zip(rows, sides, strict=True):
        counts[row.kind][side] += 1
        lines[f"{row.kind}_{side}.jsonl"].append(json.dumps(row.data, ensure_ascii=False))
    empty = [k for k in cfg.kinds if counts[k]["train"] + counts[k]["eval"] == 0]
    if empty:
        why = (
            "; pairs need two answers to the same prompt with different feedback"
            if "pairs" in empty
            else ""
        )
        raise DataError(
            f"no {', '.join(empty)} rows from {n_usable} usable traces{why} (dropped by "
            f"feedback rule {cfg.filters.feedback!r}: {_fmt_counts(drops.feedback)}; "
            f"duplicates: {_fmt_counts(drops.dedupe)}); remove the kind or loosen the filters"
        )
    return counts, lines


def write_files(out_dir: Path, lines: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """The data files, after the old manifest is removed (the caller writes the new one last,
    so a directory with a manifest holds a complete export); rows and sha256 per file."""
    (out_dir / "manifest.json").unlink(missing_ok=True)
    files = {}
    for name, file_lines in lines.items():
        text = "".join(line + "\n" for line in file_lines)
        files[name] = {"rows": len(file_lines), "sha256": _write_atomic(out_dir / name, text)}
    return files


def _pair_rows(usable: list[_Usable], min_gap: float) -> list[_Row]:
    """One pair per prompt: its best and worst rated answers, when rewards and texts differ."""
    by_prompt: dict[str, list[tuple[float, _Usable]]] = defaultdict(list)
    for u in usable:
        reward = trace_reward(u.feedback)
        if reward is not None:
            by_prompt[normalize_text(message_text(u.prompt))].append((reward, u))
    rows = []
    for group in by_prompt.values():
        # max/min keep the earliest trace among equal rewards (usable is in time order)
        best = max(group, key=lambda g: g[0])
        worst = min(group, key=lambda g: g[0])
        if best[0] - worst[0] <= min_gap:
            continue
        chosen, rejected = best[1], worst[1]
        if normalize_text(message_text([chosen.answer])) == normalize_text(
            message_text([rejected.answer])
        ):
            continue
        data = {"prompt": chosen.prompt, "chosen": [chosen.answer], "rejected": [rejected.answer]}
        keys = [group_key(chosen.trace), group_key(rejected.trace)]
        rows.append(_Row("pairs", data, dedupe_text(chosen.prompt), keys))
    return rows
