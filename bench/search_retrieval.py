"""Recall and speed of the search env's retrieval modes (bm25, dense, hybrid), side by side.

    OMP_NUM_THREADS=1 .venv/bin/python bench/search_retrieval.py            # 300 companies
    OMP_NUM_THREADS=1 .venv/bin/python bench/search_retrieval.py --n-companies 50   # quick

On the synthetic corpus (`SearchEnv(SearchConfig(n_companies=...))`, two documents per company)
it counts how often the document holding a question's answer is first (R@1) or in the top 3
(R@3) for two kinds of query: (a) the entity name a scripted demonstration searches last
(`task.metadata["queries"][-1]`, one query per document) and (b) the raw question text, one-hop
questions and two-hop ones apart (their answer is in the founder's document; the question names
only the company, which that document mentions once). Also: index build time (for dense,
embedding every document) and query latency.
The query embedding cache is off, so every query pays for its embedding.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ownlm.envs.base import Task
from ownlm.envs.search.env import SearchConfig, SearchEnv
from ownlm.envs.search.index import Retrieval, SearchIndex
from ownlm.models.embed import TextEmbedder

MODES: list[Retrieval] = ["bm25", "dense", "hybrid"]
TWO_HOP = {"founder_bcity", "founder_byear"}


def recall(index: SearchIndex, queries: list[tuple[str, int]]) -> tuple[float, float, list[float]]:
    """(recall@1, recall@3, per-query latencies in ms) of (query, gold doc id) pairs."""
    at1 = at3 = 0
    latencies_ms = []
    for query, gold in queries:
        start = time.perf_counter()
        hits = [d.id for d in index.search(query, 3)]
        latencies_ms.append((time.perf_counter() - start) * 1000)
        at1 += hits[:1] == [gold]
        at3 += gold in hits
    return at1 / len(queries), at3 / len(queries), latencies_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-companies", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    env = SearchEnv(SearchConfig(n_companies=args.n_companies))
    docs = env.index.docs
    tasks: list[Task] = env.tasks("train", env.pool_size("train")) + env.tasks(
        "test", env.pool_size("test")
    )
    entity = sorted({(t.metadata["queries"][-1], int(t.metadata["doc_id"])) for t in tasks})
    one_hop = [(t.question, int(t.metadata["doc_id"])) for t in tasks
               if t.metadata["kind"] not in TWO_HOP]  # fmt: skip
    two_hop = [(t.question, int(t.metadata["doc_id"])) for t in tasks
               if t.metadata["kind"] in TWO_HOP]  # fmt: skip
    sets = {"entity": entity, "question 1-hop": one_hop, "question 2-hop": two_hop}

    start = time.perf_counter()
    embedder = TextEmbedder(cache_size=0, num_threads=args.threads)
    load_s = time.perf_counter() - start
    print(
        f"{len(docs)} documents (n_companies={args.n_companies}), {args.threads} thread(s); "
        f"MiniLM load {load_s:.1f} s (not in build); queries: "
        + ", ".join(f"{name} {len(q)}" for name, q in sets.items())
    )
    header = f"{'mode':<7} {'build_s':>7} {'ms/query':>8} {'p95_ms':>7}"
    header += "".join(f" | {name:>14} {'R@1':>5} {'R@3':>5}" for name in sets)
    print(header)
    for mode in MODES:
        start = time.perf_counter()
        index = SearchIndex(docs, mode, embedder=embedder)
        build_s = time.perf_counter() - start
        cells, latencies = [], []
        for queries in sets.values():
            r1, r3, ms = recall(index, queries)
            cells.append(f" | {'':>14} {r1:.3f} {r3:.3f}")
            latencies += ms
        print(
            f"{mode:<7} {build_s:>7.2f} {np.mean(latencies):>8.2f} "
            f"{np.percentile(latencies, 95):>7.2f}" + "".join(cells)
        )


if __name__ == "__main__":
    main()
