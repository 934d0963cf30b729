"""Difficulty classifier: logistic regression on sentence embeddings (`ownlm router train`).

    ownlm router train --config examples/router_train.yaml
    ownlm router train --set data=labelled.jsonl --set out=runs/router/difficulty.safetensors

Input is either a JSONL file of `{"text": ..., "label": 0 or 1}` (1 = hard) or a trace store,
labelled by feedback on the answers of the small variant(s): thumbs down, or a score below
`hard_below_score`, makes the prompt hard; thumbs up or a higher score makes it easy. The output
is a safetensors file with `weight` (384,) and `bias` (1,) and the embedding settings as metadata;
`load_scorer` reads it for the router's difficulty policy.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field, model_validator

from ownlm.config import Config
from ownlm.errors import ConfigError, DataError, ModelLoadError
from ownlm.jsonl import read_jsonl
from ownlm.models.embed import EMBEDDING_DIM, EMBEDDING_MODEL, Embedder, TextEmbedder


class StoreLabels(Config):
    """Label traces of a store by the feedback their answers got."""

    url: str = Field(description="store URL, e.g. sqlite:///ownlm.db")
    variants: list[str] = Field(description="variants whose answers the feedback judges")
    hard_below_score: float = Field(
        default=0.5, description="a feedback score below this is 'hard'"
    )
    max_traces: int = Field(default=100_000, ge=1, description="traces read at most, oldest first")


class ClassifierTrainConfig(Config):
    """`ownlm router train`: where labelled texts come from and where the classifier goes."""

    data: str | None = Field(default=None, description="JSONL of {text, label}; or give `store`")
    store: StoreLabels | None = Field(None, description="label a store's traces; or give `data`")
    out: str = Field("runs/router/difficulty.safetensors", description="the classifier weights")
    holdout_fraction: float = Field(
        default=0.2, ge=0.0, lt=1.0, description="share held out to report accuracy"
    )
    l2: float = Field(
        default=1e-3, ge=0.0, description="ridge penalty on the weights (not the bias)"
    )
    max_iters: int = Field(default=50, ge=1, description="Newton iterations of the fit")
    max_length: int = Field(default=128, ge=8, le=256, description="tokens of each text embedded")
    batch_size: int = Field(default=32, ge=1, description="texts embedded at once")
    num_threads: int = Field(default=1, ge=1, description="torch threads for embedding")
    seed: int = 0

    @model_validator(mode="after")
    def _one_source(self) -> ClassifierTrainConfig:
        if (self.data is None) == (self.store is None):
            raise ValueError("give exactly one of `data` (a JSONL file) or `store` (a store URL)")
        return self


class ClassifierSummary(BaseModel):
    """What `train_classifier` did, printed by the CLI."""

    out: str
    n_train: int
    n_heldout: int
    hard_share_train: float
    heldout_accuracy: float | None
    majority_accuracy: float | None  # always answering the training set's majority class
    embed_ms_per_text: float


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function, computed without overflow for large |z|."""
    p: np.ndarray = np.exp(-np.logaddexp(0.0, -z))
    return p


def fit_logistic(
    x: np.ndarray, y: np.ndarray, *, l2: float, max_iters: int = 50, tol: float = 1e-8
) -> tuple[np.ndarray, float]:
    """L2-penalised logistic regression by Newton's method. x: (N, D), y: (N,) in {0, 1}.

    Minimises mean log-loss + l2/2 * |w|^2 (bias unpenalised); returns (w (D,), b).
    """
    n, d = x.shape
    xb = np.hstack([x.astype(np.float64), np.ones((n, 1))])  # (N, D+1)
    theta = np.zeros(d + 1)
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0
    for _ in range(max_iters):
        p = sigmoid(xb @ theta)
        grad = xb.T @ (p - y) / n + reg * theta
        hess = (xb.T * (p * (1.0 - p))) @ xb / n + np.diag(reg) + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if float(np.max(np.abs(step))) < tol:
            break
    return theta[:-1].copy(), float(theta[-1])


class DifficultyScorer:
    """P(hard | text) = sigmoid(w . embed(text) + b)."""

    def __init__(self, embedder: Embedder, weight: np.ndarray, bias: float) -> None:
        self.embedder = embedder
        self.weight = weight.astype(np.float32)
        self.bias = bias

    def score(self, text: str) -> float:
        """Difficulty in [0, 1]; embeddings of identical texts come from the embedder's cache."""
        z = float(self.embedder.embed_one(text) @ self.weight) + self.bias
        return float(sigmoid(np.array(z)))


def save_classifier(path: str | Path, weight: np.ndarray, bias: float, max_length: int) -> None:
    """Write weight, bias and the embedding settings as one safetensors file."""
    from safetensors.numpy import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "weight": weight.astype(np.float32),
        "bias": np.array([bias], dtype=np.float32),
    }
    meta = {"embedding_model": EMBEDDING_MODEL, "max_length": str(max_length)}
    save_file(tensors, str(p), metadata=meta)


def read_classifier(path: str | Path) -> tuple[np.ndarray, float, int]:
    """(weight (384,), bias, max_length) from a file written by save_classifier."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(
            f"no difficulty classifier at {p}; train one with `ownlm router train --set out={p}`"
        )
    try:
        with safe_open(str(p), framework="numpy") as f:
            meta = f.metadata() or {}
            weight, bias = f.get_tensor("weight"), float(f.get_tensor("bias")[0])
    except (SafetensorError, OSError, KeyError) as err:
        raise ModelLoadError(f"{p} is not a difficulty classifier file: {err}") from err
    if meta.get("embedding_model") != EMBEDDING_MODEL or weight.shape != (EMBEDDING_DIM,):
        raise ModelLoadError(
            f"{p} was trained on {meta.get('embedding_model')!r} embeddings of shape "
            f"{weight.shape}; retrain it with `ownlm router train`"
        )
    return weight, bias, int(meta.get("max_length", "128"))


def load_scorer(path: str | Path, embedder: Embedder | None = None) -> DifficultyScorer:
    """A scorer for the classifier file; loads the embedding model unless one is given."""
    weight, bias, max_length = read_classifier(path)
    return DifficultyScorer(embedder or TextEmbedder(max_length=max_length), weight, bias)


def read_labelled_jsonl(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Texts and 0/1 labels from a JSONL of {"text": str, "label": 0 or 1}."""
    p = Path(path)
    texts, labels = [], []
    hint = "write one with `ownlm router labels` or export labelled traces"
    for i, row in read_jsonl(p, hint=hint):
        if not isinstance(row.get("text"), str):
            raise DataError(f"{p} line {i}: needs a string 'text'; got {str(row)[:80]!r}")
        if row.get("label") not in (0, 1) or isinstance(row.get("label"), bool):
            raise DataError(
                f"{p} line {i}: 'label' must be 0 (easy) or 1 (hard), got {row.get('label')!r}"
            )
        texts.append(row["text"])
        labels.append(int(row["label"]))
    return texts, np.array(labels, dtype=np.float64)


def read_store_labels(cfg: StoreLabels) -> tuple[list[str], np.ndarray]:
    """Texts of traces answered by cfg.variants, labelled hard (1) or easy (0) by their feedback."""
    from ownlm.router.policy import route_text
    from ownlm.store.trace_store import TraceStore

    store = TraceStore(cfg.url)
    try:
        verdicts: dict[str, list[int]] = {}
        for fb in store.list_feedback():
            if fb.thumbs is not None:
                verdicts.setdefault(fb.trace_id, []).append(1 if fb.thumbs < 0 else 0)
            elif fb.score is not None:
                verdicts.setdefault(fb.trace_id, []).append(int(fb.score < cfg.hard_below_score))
        traces = store.list_traces(limit=cfg.max_traces)
    finally:
        store.close()
    wanted = set(cfg.variants)
    texts, labels = [], []
    for tr in traces:
        votes = verdicts.get(tr.trace_id)
        if not votes or tr.variant not in wanted:
            continue
        text = route_text(tr.request.get("messages", []))
        if text:
            texts.append(text)
            labels.append(1 if 2 * sum(votes) >= len(votes) else 0)  # ties count as hard
    return texts, np.array(labels, dtype=np.float64)


def train_classifier(cfg: ClassifierTrainConfig) -> ClassifierSummary:
    """Embed labelled texts, fit logistic regression, report held-out accuracy, save weights."""
    if cfg.data is not None:
        texts, labels = read_labelled_jsonl(cfg.data)
        source = cfg.data
    else:
        assert cfg.store is not None  # the config validator requires one source
        texts, labels = read_store_labels(cfg.store)
        source = f"store {cfg.store.url} (variants {cfg.store.variants})"
    if len(texts) < 2 or labels.min() == labels.max():
        raise DataError(
            f"{source}: need both easy (0) and hard (1) examples, got {len(texts)} rows with "
            f"{int(labels.sum())} hard; add labelled rows or collect more feedback"
        )
    order = list(range(len(texts)))
    random.Random(cfg.seed).shuffle(order)
    n_held = int(round(cfg.holdout_fraction * len(texts)))
    held, train = order[:n_held], order[n_held:]
    if len(set(labels[train].tolist())) < 2:
        raise ConfigError(
            f"the training split of {source} has one class only; lower holdout_fraction"
        )
    embedder = TextEmbedder(
        max_length=cfg.max_length,
        cache_size=0,
        batch_size=cfg.batch_size,
        num_threads=cfg.num_threads,
    )
    t0 = time.perf_counter()
    x = embedder.embed(texts)  # (N, 384)
    embed_ms = (time.perf_counter() - t0) * 1000.0 / len(texts)
    weight, bias = fit_logistic(x[train], labels[train], l2=cfg.l2, max_iters=cfg.max_iters)
    majority = float(labels[train].mean() >= 0.5)
    acc = base = None
    if held:
        pred = (sigmoid(x[held] @ weight + bias) >= 0.5).astype(np.float64)
        acc = float((pred == labels[held]).mean())
        base = float((labels[held] == majority).mean())
    save_classifier(cfg.out, weight, bias, cfg.max_length)
    return ClassifierSummary(
        out=cfg.out,
        n_train=len(train),
        n_heldout=len(held),
        hard_share_train=float(labels[train].mean()),
        heldout_accuracy=acc,
        majority_accuracy=base,
        embed_ms_per_text=embed_ms,
    )
