"""Serving: the OpenAI-compatible data plane.

``create_app(store, engine)`` builds the FastAPI app; ``TransformersEngine``
serves real adapters on shared base models; ``EchoEngine`` is the fake for
tests where the model is not the point.
"""

from modelyard.serving._app import ServerLimits, create_app
from modelyard.serving._engine import (
    EchoEngine,
    Engine,
    EngineError,
    Generation,
    SamplingParams,
    TransformersEngine,
)
from modelyard.serving._router import Router
from modelyard.serving._server import BackgroundServer, run_server

__all__ = [
    "BackgroundServer",
    "EchoEngine",
    "Engine",
    "EngineError",
    "Generation",
    "Router",
    "SamplingParams",
    "ServerLimits",
    "TransformersEngine",
    "create_app",
    "run_server",
]
