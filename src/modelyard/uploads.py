"""What an upload's body holds besides its file, for every bound on it to agree.

A file uploaded to ``POST /v1/files`` comes as a multipart body: the file, its part
headers and boundaries, and the ``purpose`` field. The servers' guard allows the file's
cap plus ``FORM_OVERHEAD`` for the rest, the router (``modelyard route``) does the same,
and the early storage-quota refusal leaves it out of a declared ``Content-Length``.
"""

from __future__ import annotations

FORM_OVERHEAD = 64 * 1024
"""The most an upload's body may hold besides its file (a file name with RFC 5987's
``filename*`` included)."""

__all__ = ["FORM_OVERHEAD"]
