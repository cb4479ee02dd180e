"""Serving: the OpenAI-compatible data plane.

``create_app(store, engine)`` builds the FastAPI app; ``TransformersEngine``
serves LoRA adapters on shared base models with dynamic mixed-adapter batching
and real token streaming (``Engine.stream`` → ``TokenStream``); ``EchoEngine``
is the fake for tests where the model is not the point.
"""

from modelyard.serving._app import ServerLimits, create_app
from modelyard.serving._engine import EchoEngine, Engine, TransformersEngine
from modelyard.serving._prompts import render_chat
from modelyard.serving._router import Router
from modelyard.serving._server import BackgroundServer, run_server
from modelyard.serving._stream import TokenStream
from modelyard.serving._types import (
    EngineError,
    EngineObserver,
    EngineStats,
    Generation,
    SamplingParams,
    StreamEvent,
)

__all__ = [
    "BackgroundServer",
    "EchoEngine",
    "Engine",
    "EngineError",
    "EngineObserver",
    "EngineStats",
    "Generation",
    "Router",
    "SamplingParams",
    "ServerLimits",
    "StreamEvent",
    "TokenStream",
    "TransformersEngine",
    "create_app",
    "render_chat",
    "run_server",
]
