"""The one thing pyproject.toml does not declare without a warning: the C extension.

The record seals' hot path (docs/audit.md): optional, so that a build without a compiler
or OpenSSL's headers installs without it, and modelyard computes the same leaves in
Python. Everything else about the package is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "modelyard.audit._fastseal",
            sources=["src/modelyard/audit/_fastseal.c"],
            libraries=["crypto"],
            optional=True,
        )
    ]
)
