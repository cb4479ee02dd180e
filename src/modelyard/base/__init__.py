"""Base models: build a tiny one from a corpus, load any Hugging Face one, hash its weights.

A base is an ordinary Hugging Face model directory (or hub id); tenants'
adapters are trained on top of it and served together with it. This package
is where models are loaded: ``load_base``, ``load_adapter`` (a LoRA directory
on a loaded base) and ``eos_token_ids`` (what ends a generation), for
training, evaluation and serving alike.
"""

from modelyard.base._adapter import check_adapter_dir, load_adapter
from modelyard.base._build import ProgressFn, TinyBaseInfo, create_tiny_base, read_corpus
from modelyard.base._fs import check_out_dir, make_shareable, publish_dir
from modelyard.base._hashes import sha256_file, weight_hashes
from modelyard.base._hf import quiet_progress
from modelyard.base._load import eos_token_ids, is_local, load_base, load_tokenizer, model_dir

__all__ = [
    "ProgressFn",
    "TinyBaseInfo",
    "check_adapter_dir",
    "check_out_dir",
    "create_tiny_base",
    "eos_token_ids",
    "is_local",
    "load_adapter",
    "load_base",
    "load_tokenizer",
    "make_shareable",
    "model_dir",
    "publish_dir",
    "quiet_progress",
    "read_corpus",
    "sha256_file",
    "weight_hashes",
]
