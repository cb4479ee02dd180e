"""The few S3 calls the artifact store makes, on one bucket and key prefix, with errors translated.

Every write this client makes is put-if-absent: a hook adds ``If-None-Match: *``
to each ``PutObject`` and ``CompleteMultipartUpload``, including those boto3's
transfer manager sends (its upload arguments do not take the header), so a
second writer of a key gets ``412 Precondition Failed`` instead of replacing
the object. Content-addressed keys never need an overwrite: repairing a damaged
object deletes it first.

Big files go through boto3's transfer manager (multipart above the threshold,
parts in parallel); a failed upload is aborted by it, one killed with its
process is left for ``abort_upload`` (the store's sweep). The endpoint, region
and credentials come from boto3's usual settings (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, …); nothing here names a host.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from modelyard.errors import ArtifactError

_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchUpload"})
_BARE_NOT_FOUND = frozenset({"404", "NotFound"})  # no S3 error body: maybe not S3 at all
_EXISTS = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
_CONDITIONAL_OPS = ("PutObject", "CompleteMultipartUpload")
MIB = 1 << 20


class KeyExists(Exception):
    """A put-if-absent found the key already written (internal: the store decides)."""


@dataclass(frozen=True)
class S3Url:
    """``s3://bucket/prefix``: where a store keeps its objects."""

    bucket: str
    prefix: str  # "" or ending in "/"

    @classmethod
    def parse(cls, url: str) -> S3Url:
        rest = url.removeprefix("s3://")
        bucket, _, prefix = rest.partition("/")
        prefix = prefix.strip("/")
        if not url.startswith("s3://") or not bucket or "//" in prefix:
            raise ArtifactError(
                f"not an S3 location: {url!r}",
                hint="Write it as s3://BUCKET or s3://BUCKET/PREFIX.",
            )
        return cls(bucket, f"{prefix}/" if prefix else "")

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def url_of(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime


@dataclass(frozen=True)
class Upload:
    key: str
    upload_id: str
    initiated: datetime


@dataclass(frozen=True)
class TransferSettings:
    """When a file goes in parts, and how big and how many at once (boto3's defaults)."""

    multipart_threshold: int = 8 * MIB
    multipart_chunksize: int = 8 * MIB
    max_concurrency: int = 8


def new_client() -> Any:
    """An S3 client from boto3's usual settings (environment, config files, instance roles)."""
    import boto3  # only a store on S3 pays for the import
    from botocore.config import Config

    config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10)
    return boto3.session.Session().client("s3", config=config)


def _put_if_absent(params: dict[str, Any], **_kwargs: Any) -> None:
    params.setdefault("IfNoneMatch", "*")


class S3Api:
    """Calls on ``url``'s bucket, keys relative to its prefix, errors as ``ArtifactError``."""

    def __init__(self, url: S3Url, client: Any, transfer: TransferSettings) -> None:
        self.url = url
        self.client = client
        self._transfer = transfer
        self._bucket_seen = False  # a bare 404 is a missing key once the bucket answered
        for op in _CONDITIONAL_OPS:
            client.meta.events.register(
                f"before-parameter-build.s3.{op}", _put_if_absent, unique_id=f"modelyard-{op}"
            )

    def key(self, rel: str) -> str:
        return self.url.prefix + rel

    def rel(self, key: str) -> str:
        return key.removeprefix(self.url.prefix)

    # -- reads ------------------------------------------------------------------------

    def head(self, rel: str) -> ObjectInfo | None:
        key = self.key(rel)
        try:
            with self._errors(f"read {self.url.url_of(key)}", missing_ok=True):
                meta = self.client.head_object(Bucket=self.url.bucket, Key=key)
        except _Missing:
            return None
        return ObjectInfo(rel, int(meta["ContentLength"]), meta["LastModified"])

    def read(self, rel: str) -> bytes | None:
        key = self.key(rel)
        try:
            with self._errors(f"read {self.url.url_of(key)}", missing_ok=True):
                body = self.client.get_object(Bucket=self.url.bucket, Key=key)["Body"]
                with contextlib.closing(body):
                    data: bytes = body.read()
        except _Missing:
            return None
        return data

    def download(self, rel: str, dest: Path) -> bool:
        """Copy an object into the new file ``dest``; False when there is no such object."""
        key = self.key(rel)
        try:
            with (
                self._errors(f"download {self.url.url_of(key)}", missing_ok=True),
                self._manager() as manager,
            ):
                manager.download(self.url.bucket, key, str(dest)).result()
        except _Missing:
            return False
        return True

    def objects(self, rel_prefix: str) -> Iterator[ObjectInfo]:
        """Every object under ``rel_prefix``, in key order."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.url.bucket, Prefix=self.key(rel_prefix)
        )
        with self._errors(f"list {self.url.url_of(self.key(rel_prefix))}"):
            for page in pages:
                for item in page.get("Contents", []):
                    yield ObjectInfo(self.rel(item["Key"]), int(item["Size"]), item["LastModified"])

    def uploads(self, rel_prefix: str) -> Iterator[Upload]:
        """Multipart uploads begun under ``rel_prefix`` and neither completed nor aborted."""
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.url.bucket, Prefix=self.key(rel_prefix)
        )
        with self._errors(f"list the uploads under {self.url.url_of(self.key(rel_prefix))}"):
            for page in pages:
                for item in page.get("Uploads", []):
                    yield Upload(self.rel(item["Key"]), item["UploadId"], item["Initiated"])

    def check_bucket(self) -> None:
        try:
            with self._errors(
                f"reach the bucket {self.url.bucket}", missing_ok=True, of_bucket=True
            ):
                self.client.head_bucket(Bucket=self.url.bucket)
        except _Missing:
            raise ArtifactError(
                f"cannot reach the bucket {self.url.bucket}: NoSuchBucket (or "
                f"{self.client.meta.endpoint_url} is not an S3 service)",
                hint=_hint("NoSuchBucket") + " Check AWS_ENDPOINT_URL too.",
            ) from None

    # -- writes -----------------------------------------------------------------------

    def put_new(self, rel: str, data: bytes) -> None:
        """Write a small object; ``KeyExists`` when the key is already written."""
        key = self.key(rel)
        with self._errors(f"write {self.url.url_of(key)}"):
            self.client.put_object(Bucket=self.url.bucket, Key=key, Body=data)

    def upload_new(self, path: Path, rel: str) -> None:
        """Upload a file (in parts when big); ``KeyExists`` when the key is already written."""
        key = self.key(rel)
        with self._errors(f"upload {path} to {self.url.url_of(key)}"), self._manager() as manager:
            manager.upload(str(path), self.url.bucket, key).result()

    def delete(self, rels: list[str]) -> None:
        """Delete objects (a missing one is no error), a thousand per request."""
        for start in range(0, len(rels), 1000):
            batch = [{"Key": self.key(r)} for r in rels[start : start + 1000]]
            with self._errors(f"delete objects in {self.url}"):
                answer = self.client.delete_objects(
                    Bucket=self.url.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            if errors := answer.get("Errors"):
                first = errors[0]
                raise ArtifactError(
                    f"cannot delete {self.url.url_of(first['Key'])}: {first.get('Message')}",
                    hint="Check that these credentials may delete objects in the bucket.",
                )

    def abort_upload(self, rel: str, upload_id: str) -> None:
        key = self.key(rel)
        try:
            with self._errors(f"abort the upload of {self.url.url_of(key)}", missing_ok=True):
                self.client.abort_multipart_upload(
                    Bucket=self.url.bucket, Key=key, UploadId=upload_id
                )
        except _Missing:
            return  # aborted or completed meanwhile

    # -- internals ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _manager(self) -> Iterator[Any]:
        from boto3.s3.transfer import TransferConfig, create_transfer_manager

        config = TransferConfig(
            multipart_threshold=self._transfer.multipart_threshold,
            multipart_chunksize=self._transfer.multipart_chunksize,
            max_concurrency=self._transfer.max_concurrency,
        )
        with create_transfer_manager(self.client, config) as manager:
            yield manager

    @contextlib.contextmanager
    def _errors(
        self, doing: str, *, missing_ok: bool = False, of_bucket: bool = False
    ) -> Iterator[None]:
        """Translate boto errors, once, at this border (``from exc``); a missing object is
        ``_Missing`` where the caller says what that means (``missing_ok``)."""
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if missing_ok and code in _NOT_FOUND:
                if code in _BARE_NOT_FOUND and not (of_bucket or self._bucket_seen):
                    # A HEAD's 404 has no body: S3's word for a missing key, and any web
                    # server's for a wrong AWS_ENDPOINT_URL. The bucket tells them apart.
                    self.check_bucket()
                    self._bucket_seen = True
                raise _Missing from exc
            if code in _EXISTS:
                raise KeyExists from exc
            raise ArtifactError(
                f"cannot {doing}: {code or 'error'}: {error.get('Message') or exc}",
                hint=_hint(code),
                s3_code=code,
            ) from exc
        except BotoCoreError as exc:
            raise ArtifactError(
                f"cannot {doing}: {exc}",
                hint="Check AWS_ENDPOINT_URL, the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE) "
                "and that the service answers.",
            ) from exc


class _Missing(Exception):
    """The object (or upload) is not there: each caller says what that means."""


def _hint(code: str) -> str:
    if code in ("NoSuchBucket",):
        return "Create the bucket, or fix the bucket in MODELYARD_ARTIFACTS."
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
        return "Check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE)."
    if code in ("NotImplemented", "501"):
        return (
            "This S3-compatible service does not support a call the store needs "
            "(conditional writes with If-None-Match: see docs/storage.md)."
        )
    return "Check the S3 service and the bucket named in MODELYARD_ARTIFACTS."
