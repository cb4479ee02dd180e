"""Running the real ``modelyard`` command in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Result:
    code: int
    out: str
    err: str


def modelyard(
    *args: str, home: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> Result:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    full_env.update({"MODELYARD_HOME": str(home), "COLUMNS": "200"})
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "modelyard", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)
