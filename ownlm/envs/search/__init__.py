"""The search-and-cite env: a corpus, a BM25 index, `search`/`open` tools and cited answers."""
