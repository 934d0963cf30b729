"""Lexical search over documents with BM25 (bm25s): `SearchIndex(docs).search(query, k)`."""

from __future__ import annotations

import bm25s

from ownlm.envs.search.corpus import Document
from ownlm.errors import DataError


class SearchIndex:
    """A BM25 index over title + text of each document, and lookup by id."""

    def __init__(self, docs: list[Document]) -> None:
        if not docs:
            raise DataError("no documents to index; give the search env a corpus")
        self.docs = list(docs)
        self.by_id = {d.id: d for d in self.docs}
        self._bm25 = bm25s.BM25()
        corpus = [f"{d.title}\n{d.text}" for d in self.docs]
        self._bm25.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False),
                         show_progress=False)  # fmt: skip

    def search(self, query: str, k: int) -> list[Document]:
        """Up to k documents best matching the query, best first; [] when no word matches."""
        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False)
        if len(tokens.ids[0]) == 0:
            return []
        k = min(k, len(self.docs))
        hits, scores = self._bm25.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        return [self.docs[int(i)] for i, s in zip(hits[0], scores[0], strict=True) if s > 0]
