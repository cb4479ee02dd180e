"""Serving: the OpenAI-compatible data plane.

``create_app(store, engine)`` builds the FastAPI app; ``TransformersEngine``
serves LoRA adapters on shared base models with dynamic mixed-adapter batching
and real token streaming (``Engine.stream`` → ``TokenStream``); ``EchoEngine``
is the fake for tests where the model is not the point (``PacedEchoEngine``: the
same, one word at a time, for tests of time). ``UpstreamEngine`` answers versions
of kind ``upstream`` from another OpenAI-compatible server (``UpstreamClient``);
``EngineSet`` puts it beside the local engine, so traffic plans may mix them.
``VLLMEngine`` serves versions on vLLM servers it starts and supervises
(``VLLMProcess``, in vLLM's own environment: ``VLLMOptions.python``).
``ServerLimits`` holds the body, prompt and ``max_tokens`` caps, the request
timeout and the default per-key rate limits (``RateLimiter``, in memory per
server); ``OperatorAccess`` says who may read ``/metrics`` and the API docs
(``create_metrics_app``: ``/metrics`` on a listener of its own); ``run_server``
drains on SIGTERM (``Drain``) before it exits. ``InProcessPlane`` is the same data
plane called in process, without HTTP (``modelyard batch run``): each request an
``Answer``, its record marked with its ``Origin`` (a batch job).
"""

from modelyard.serving._app import create_app, create_metrics_app
from modelyard.serving._batch_runner import BatchSettings
from modelyard.serving._device import Placement, placement
from modelyard.serving._engine import EchoEngine, Engine, TransformersEngine
from modelyard.serving._guard import OperatorAccess
from modelyard.serving._inprocess import Answer, InProcessPlane
from modelyard.serving._limits import (
    RateLimiter,
    ServerLimits,
    TokenCounter,
    count_prompt_tokens,
)
from modelyard.serving._paced import PacedEchoEngine
from modelyard.serving._prompts import render_chat
from modelyard.serving._router import Router
from modelyard.serving._server import BackgroundServer, DrainingServer, run_server
from modelyard.serving._shutdown import Drain
from modelyard.serving._stream import TokenStream
from modelyard.serving._types import (
    EngineError,
    EngineObserver,
    EngineStats,
    Generation,
    Origin,
    SamplingParams,
    StreamEvent,
)
from modelyard.serving._upstream import ChatPrompt, UpstreamClient
from modelyard.serving._upstream_engine import EngineSet, UpstreamEngine
from modelyard.serving._vllm import VLLMOptions, VLLMProcess
from modelyard.serving._vllm_engine import SEQS as VLLM_MAX_NUM_SEQS
from modelyard.serving._vllm_engine import VLLMEngine
from modelyard.serving._wire import MAX_STOP, MAX_STOP_CHARS

__all__ = [
    "MAX_STOP",
    "MAX_STOP_CHARS",
    "VLLM_MAX_NUM_SEQS",
    "Answer",
    "BackgroundServer",
    "BatchSettings",
    "ChatPrompt",
    "Drain",
    "DrainingServer",
    "EchoEngine",
    "Engine",
    "EngineError",
    "EngineObserver",
    "EngineSet",
    "EngineStats",
    "Generation",
    "InProcessPlane",
    "OperatorAccess",
    "Origin",
    "PacedEchoEngine",
    "Placement",
    "RateLimiter",
    "Router",
    "SamplingParams",
    "ServerLimits",
    "StreamEvent",
    "TokenCounter",
    "TokenStream",
    "TransformersEngine",
    "UpstreamClient",
    "UpstreamEngine",
    "VLLMEngine",
    "VLLMOptions",
    "VLLMProcess",
    "count_prompt_tokens",
    "create_app",
    "create_metrics_app",
    "placement",
    "render_chat",
    "run_server",
]
