"""Base models: build a tiny one from a corpus, load any Hugging Face one, hash its weights.

A base is an ordinary Hugging Face model directory (or hub id); tenants'
adapters are trained on top of it and served together with it.
"""

from modelyard.base._build import ProgressFn, TinyBaseInfo, create_tiny_base, read_corpus
from modelyard.base._hashes import sha256_file, weight_hashes
from modelyard.base._load import load_base, load_tokenizer

__all__ = [
    "ProgressFn",
    "TinyBaseInfo",
    "create_tiny_base",
    "load_base",
    "load_tokenizer",
    "read_corpus",
    "sha256_file",
    "weight_hashes",
]
