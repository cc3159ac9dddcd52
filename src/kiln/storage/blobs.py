"""Content-addressed files (by sha256) and uploaded blobs (by blob ID), written atomically."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from kiln.errors import InvalidRequest
from kiln.ids import new_id

_SHA256 = re.compile(r"[0-9a-f]{64}")
_BLOB_ID = re.compile(r"bl-[0-9A-Za-z]{1,60}")


class BlobExists(InvalidRequest):
    """An upload to a blob ID that already has other contents."""


def _md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.files_dir = root / "sha256"
        self.blobs_dir = root / "blobs"
        for d in (self.files_dir, self.blobs_dir, root / "tmp"):
            d.mkdir(parents=True, exist_ok=True)

    # -- content-addressed files (mount contents) ----------------------------------------------

    def file_path(self, sha256_hex: str) -> Path:
        if not _SHA256.fullmatch(sha256_hex):
            raise InvalidRequest(f"{sha256_hex[:80]!r} is not a sha256 hex digest")
        return self.files_dir / sha256_hex[:2] / sha256_hex

    def has_file(self, sha256_hex: str) -> bool:
        return self.file_path(sha256_hex).exists()

    def put_file(self, data: bytes, expected_sha256: str | None = None) -> str:
        digest = hashlib.sha256(data).hexdigest()
        if expected_sha256 is not None and digest != expected_sha256:
            raise InvalidRequest(
                f"uploaded file content has sha256 {digest}, not the announced {expected_sha256}; "
                "the file changed during upload: run again"
            )
        path = self.file_path(digest)
        if not path.exists():
            self._write_atomic(path, data)
        return digest

    def put_file_from_blob(self, blob_id: str, expected_sha256: str) -> str:
        return self.put_file(self.read_blob(blob_id), expected_sha256)

    # -- blobs (large payloads the client uploads over HTTP) ------------------------------------

    def new_blob_id(self) -> str:
        return new_id("bl")

    def blob_path(self, blob_id: str) -> Path:
        if not _BLOB_ID.fullmatch(blob_id):
            raise InvalidRequest(f"{blob_id[:80]!r} is not a blob ID")
        return self.blobs_dir / blob_id

    def write_blob(self, blob_id: str, data: bytes) -> str:
        """Store an uploaded blob; returns its hex MD5 (the ETag the client verifies)."""
        self._write_atomic(self.blob_path(blob_id), data)
        return hashlib.md5(data).hexdigest()

    def staging_file(self) -> tuple[int, Path]:
        """A temporary file (descriptor, path) to stream an upload into before `commit_blob`."""
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        return fd, Path(tmp)

    def commit_blob(self, blob_id: str, tmp: Path, md5_hex: str) -> str:
        """Publish an uploaded file as `blob_id`, never replacing an existing blob. A repeated
        upload of the same bytes (a client's retry) is accepted; other bytes are refused."""
        path = self.blob_path(blob_id)
        try:
            os.chmod(tmp, 0o644)
            os.link(tmp, path)  # fails if the blob exists: no overwrite, even in a race
        except FileExistsError:
            if _md5_of(path) != md5_hex:
                raise BlobExists(
                    f"blob {blob_id} was already uploaded; ask the server for a new blob"
                ) from None
        finally:
            tmp.unlink(missing_ok=True)
        return md5_hex

    def read_blob(self, blob_id: str) -> bytes:
        try:
            return self.blob_path(blob_id).read_bytes()
        except FileNotFoundError:
            raise InvalidRequest(f"blob {blob_id} was never uploaded") from None

    def create_blob(self, data: bytes) -> str:
        blob_id = self.new_blob_id()
        self.write_blob(blob_id, data)
        return blob_id

    def _write_atomic(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            # World-readable, as most mounted files are: mount trees can then hard-link it.
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
