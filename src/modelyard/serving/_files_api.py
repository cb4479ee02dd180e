"""OpenAI's Files API: ``/v1/files`` (upload, list, retrieve, content, delete).

A file belongs to the tenant of the key that uploaded it; every route needs the
``infer`` scope, and another tenant's file id is the same 404 as an id that never
existed. Only ``purpose=batch`` is uploaded here (a batch's input); a batch's
output and error files are ``batch_output`` files of its tenant. An input file is
checked when a batch is created from it, not at upload, as OpenAI does. Files expire
(``_file_expiry``): after 30 days unless the upload's ``expires_after`` says sooner. The upload's
size cap (``--max-file-bytes``) is enforced by the guard before the body is read,
and again on the file itself.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from modelyard.errors import ConfigError, RequestTooLarge
from modelyard.serving._auth import KeyDep
from modelyard.serving._file_expiry import FORM_FIELDS, form_expiry
from modelyard.serving._files import FileKeeper
from modelyard.serving._plane import DataPlane
from modelyard.store import FILE_PURPOSES, StoredFile
from modelyard.uploads import FORM_OVERHEAD

UPLOADED_PURPOSES = ("batch",)  # what a client may upload (OpenAI has more)
MAX_LIST = 10000  # OpenAI's largest page of files


def file_object(f: StoredFile) -> dict[str, Any]:
    """OpenAI's ``file`` object."""
    return {
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": int(f.created_at.timestamp()),
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "expires_at": None if f.expires_at is None else int(f.expires_at.timestamp()),
        "status_details": None,
    }


def add_file_routes(app: FastAPI, files: FileKeeper, plane: DataPlane) -> None:
    """The Files API of ``app`` over ``files``; an upload takes one of its key's
    requests/min from ``plane``."""
    store = files.store

    @app.post("/v1/files")
    async def upload(request: Request, key: KeyDep) -> dict[str, Any]:
        """Upload a file (multipart: ``file`` and ``purpose``). Before its body is read: one
        of the key's requests/min, and a body that could not fit the tenant's room even
        without its multipart framing is refused."""
        sent_as = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if sent_as != "multipart/form-data":  # a JSON body has no file: say how to send one
            raise ConfigError(
                f"the upload was sent as {sent_as or 'no content type'!r}; send the file as "
                "multipart/form-data with the parts 'file' and 'purpose' (batch), as "
                "client.files.create does"
            )
        await plane.admit_call(key)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > FORM_OVERHEAD:
            await run_in_threadpool(files.check_room, key.tenant, int(declared) - FORM_OVERHEAD)
        form = await request.form(max_files=1, max_fields=8)
        try:
            extra = sorted(set(form.keys()) - {"file", "purpose", *FORM_FIELDS})
            if extra:
                raise ConfigError(
                    f"{extra[0][:60]} is not a parameter this server accepts; send 'file', "
                    "'purpose' and, if you wish, 'expires_after'",
                    param=extra[0][:60],
                )
            lifetime = form_expiry(form)
            purpose = form.get("purpose")
            if not isinstance(purpose, str) or not purpose:
                raise ConfigError("purpose is missing: send purpose=batch", param="purpose")
            if purpose not in UPLOADED_PURPOSES:
                raise ConfigError(
                    f"purpose {purpose[:40]!r} is not accepted here: only 'batch' files (the "
                    "input of a batch) are uploaded to this server",
                    param="purpose",
                )
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ConfigError("file is missing: send the file as a multipart part named "
                                  "'file'", param="file")  # fmt: skip
            size = upload.size if upload.size is not None else 0
            if size > files.max_file_bytes:
                raise RequestTooLarge(
                    f"the file is {size} bytes, over this server's limit of "
                    f"{files.max_file_bytes} bytes (--max-file-bytes)",
                    hint="Split the requests into several files, one batch each.",
                    param="file",
                )
            name = (upload.filename or "upload.jsonl")[:255]
            saved = await run_in_threadpool(
                files.save, key.tenant, upload.file, filename=name, purpose=purpose,
                api_key_id=key.id, expires_s=lifetime,
            )  # fmt: skip
        finally:
            await form.close()
        return file_object(saved)

    @app.get("/v1/files")
    def list_files(
        key: KeyDep,
        purpose: str | None = None,
        limit: int = MAX_LIST,
        after: str | None = None,
        order: str = "desc",
    ) -> dict[str, Any]:
        """The tenant's files, newest first (``order=asc``: oldest first), a page at a time."""
        if not 1 <= limit <= MAX_LIST:
            raise ConfigError(f"limit is {limit}: it must be 1 to {MAX_LIST}", param="limit")
        if order not in ("asc", "desc"):
            raise ConfigError(f"order is {order[:20]!r}: use asc or desc", param="order")
        if purpose is not None and purpose not in FILE_PURPOSES:
            raise ConfigError(
                f"purpose {purpose[:40]!r} is not one of {', '.join(FILE_PURPOSES)}",
                param="purpose",
            )
        found, more = store.list_files(
            key.tenant, purpose=purpose, limit=limit, after=after, ascending=order == "asc"
        )
        return page([file_object(f) for f in found], more)

    @app.get("/v1/files/{file_id}")
    def retrieve_file(file_id: str, key: KeyDep) -> dict[str, Any]:
        return file_object(store.get_file(key.tenant, file_id))

    @app.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str, key: KeyDep) -> FileResponse:
        """The file's bytes, each checked against its digest first: up to ``--max-file-bytes``
        read and hashed on the server's worker threads, which every tenant's requests share,
        so in one of the tenant's slots (``TenantSlots``, as its prompts are tokenized): its
        other reads wait on the event loop, and cannot hold every thread."""
        async with plane.slots.hold(key.tenant):
            found = await run_in_threadpool(store.get_file, key.tenant, file_id)
            path = await run_in_threadpool(files.path, found)
        return FileResponse(path, media_type="application/octet-stream", filename=found.filename)

    @app.delete("/v1/files/{file_id}")
    def delete_file(file_id: str, key: KeyDep) -> dict[str, Any]:
        """Delete the file; not the input of a batch still running (409)."""
        gone = files.delete(key.tenant, file_id)
        return {"id": gone.id, "object": "file", "deleted": True}


def page(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    """OpenAI's cursor page."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": more,
    }


__all__ = ["add_file_routes", "file_object", "page"]
