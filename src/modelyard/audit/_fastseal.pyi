"""The record seals' hot path in C (``_fastseal.c``); ``_seals`` is its specification."""

def encode(rows: list[dict[str, object]], fields: tuple[str, ...], kinds: str,
           version: int) -> list[bytes | None]: ...  # fmt: skip
def leaves(
    rows: list[dict[str, object]], fields: tuple[str, ...], kinds: str, version: int
) -> tuple[bytes, list[int], list[str | None]]: ...
def root(leaves: bytes) -> bytes: ...
