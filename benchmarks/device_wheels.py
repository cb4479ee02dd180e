"""Wheels for running benchmarks/gpu.py on the lent GPU machine (no network there).

That machine's Python 3.12 has torch (CUDA 13), accelerate and numpy, but not the pydantic
that modelyard's settings need, nor this project's versions of transformers and peft, nor
bitsandbytes. This downloads, for CPython 3.12 on x86-64 Linux, the versions installed in
this .venv (the ones the tests ran with) into ``.whl/`` (ignored by git, carried to the
machine), and trims bitsandbytes' wheel to its CUDA 13 and CPU libraries: with the
libraries of every other CUDA and ROCm it is 43 MB, over what a call may carry beside
the repository (64 MiB in all).

    .venv/bin/python benchmarks/device_wheels.py          # then, on the machine:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site:src:benchmarks python3 benchmarks/gpu.py --out $OUT/gpu-results.md
"""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# what modelyard's training, data and base packages import that the machine lacks, with
# what transformers 5.23 and huggingface_hub 2 need beyond it (hf-xet only downloads: left),
# found by running gpu.py --quick on a bare environment of the machine's packages
PACKAGES = [
    "transformers", "peft", "huggingface_hub", "tokenizers", "httpx2", "httpcore2", "h2",
    "hpack", "hyperframe", "truststore", "sniffio", "pydantic", "pydantic_core",
    "annotated-types", "typing-inspection", "pydantic-settings", "python-dotenv",
    "phonenumberslite", "bitsandbytes",
    # the serving engine and store, for the decode rates (boto3 is imported only for s3://)
    "sqlalchemy", "greenlet", "alembic", "mako", "fastapi", "starlette", "uvicorn", "orjson",
    "joserfc", "cryptography", "cffi", "pycparser", "xgrammar", "apache-tvm-ffi", "redis",
    "zstandard", "opentelemetry-api",
]  # fmt: skip
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28)] + ["manylinux2014_x86_64"]
KEEP_LIBRARIES = ("libbitsandbytes_cuda130.so", "libbitsandbytes_cuda132.so",
                  "libbitsandbytes_cpu.so")  # fmt: skip
LIMIT = 64 * 1024**2


def download(names: list[str], out: Path) -> None:
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in names]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
               *[f"--platform={p}" for p in PLATFORMS], "-d", str(out), *pins]  # fmt: skip
    subprocess.run(command, check=True)


def trim_bitsandbytes(out: Path) -> Path:
    """The bitsandbytes wheel rewritten without the libraries of other CUDA and ROCm
    versions (its RECORD rewritten to match)."""
    (wheel,) = out.glob("bitsandbytes-*.whl")
    with tempfile.TemporaryDirectory() as tmp:
        trimmed = Path(tmp) / wheel.name
        with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(trimmed, "w") as target:
            dropped = {
                info.filename
                for info in source.infolist()
                if info.filename.startswith("bitsandbytes/libbitsandbytes_")
                and Path(info.filename).name not in KEEP_LIBRARIES
            }
            for info in source.infolist():
                if info.filename in dropped:
                    continue
                data = source.read(info.filename)
                if info.filename.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines(keepends=True)
                    data = "".join(x for x in lines if x.split(",")[0] not in dropped).encode()
                target.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
        trimmed.replace(wheel)
    return wheel


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path(".whl"))
    args = parser.parse_args()
    args.out.mkdir(exist_ok=True)
    download(PACKAGES, args.out)
    trim_bitsandbytes(args.out)
    total = sum(p.stat().st_size for p in args.out.glob("*.whl"))
    print(f"{len(list(args.out.glob('*.whl')))} wheels, {total / 1024**2:.1f} MiB in {args.out}")
    if total > LIMIT:
        print("over the 64 MiB a device call carries", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
