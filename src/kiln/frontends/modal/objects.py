"""Blobs, mounts and secrets: the objects a run uploads or creates before its functions."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp
from modal_proto import api_pb2

from kiln.core.core import Core
from kiln.errors import NotFound
from kiln.frontends.modal.dispatch import AlreadyExists, CallContext, TooLarge, empty
from kiln.images.pythons import client_package_dir
from kiln.storage.mounts import MountFile
from kiln.storage.secrets import EPHEMERAL

MODAL_VERSION = importlib.metadata.version("modal")
CLIENT_MOUNT_NAME = f"modal-client-mount-{MODAL_VERSION}"
_CLIENT_PACKAGES = ("modal", "modal_proto", "modal_version", "synchronicity")
_GLOBAL = api_pb2.DEPLOYMENT_NAMESPACE_GLOBAL


class ObjectHandlers:
    def __init__(self, core: Core) -> None:
        self.core = core

    # -- blobs ---------------------------------------------------------------------------------

    async def BlobCreate(
        self, req: api_pb2.BlobCreateRequest, ctx: CallContext
    ) -> api_pb2.BlobCreateResponse:
        limit = self.core.config.max_blob_bytes
        if req.content_length > limit:
            raise TooLarge(
                f"this upload is {req.content_length} bytes; the largest blob this kiln server accepts is "
                f"{limit} bytes (KILN_MAX_BLOB_GB)"
            )
        blob_id = self.core.blobs.new_blob_id()
        # The URL allows the size the client announced (the client always sends it).
        url = self.core.signed_urls.upload(blob_id, req.content_length if req.content_length > 0 else limit)
        return api_pb2.BlobCreateResponse(
            blob_id=blob_id,
            upload_url=url,
            blob_ids=[blob_id],
            upload_urls=api_pb2.UploadUrlList(items=[url]),
        )

    async def BlobGet(self, req: api_pb2.BlobGetRequest, ctx: CallContext) -> api_pb2.BlobGetResponse:
        if not self.core.blobs.blob_path(req.blob_id).exists():
            raise NotFound(f"blob {req.blob_id} not found")
        return api_pb2.BlobGetResponse(download_url=self.core.signed_urls.download(req.blob_id))

    # -- mounts --------------------------------------------------------------------------------

    async def MountBatchedCheckExistence(
        self, req: api_pb2.MountBatchedCheckExistenceRequest, ctx: CallContext
    ) -> api_pb2.MountBatchedCheckExistenceResponse:
        missing = [h for h in req.sha256_hex_hashes if not self.core.blobs.has_file(h)]
        return api_pb2.MountBatchedCheckExistenceResponse(
            missing_sha256_hex_hashes=missing, checked_at=_now()
        )

    async def MountPutFile(
        self, req: api_pb2.MountPutFileRequest, ctx: CallContext
    ) -> api_pb2.MountPutFileResponse:
        if req.WhichOneof("data_oneof") == "data_blob_id":
            self.core.blobs.put_file_from_blob(req.data_blob_id, req.sha256_hex)
        elif req.HasField("data"):
            self.core.blobs.put_file(req.data, req.sha256_hex)
        elif not self.core.blobs.has_file(req.sha256_hex):
            return api_pb2.MountPutFileResponse(exists=False, checked_at=_now())
        return api_pb2.MountPutFileResponse(exists=True, checked_at=_now())

    async def MountGetOrCreate(
        self, req: api_pb2.MountGetOrCreateRequest, ctx: CallContext
    ) -> api_pb2.MountGetOrCreateResponse:
        mounts = self.core.mounts
        namespace = str(req.namespace)
        creation = req.object_creation_type
        if req.deployment_name and creation == api_pb2.OBJECT_CREATION_TYPE_UNSPECIFIED:
            mount_id = mounts.lookup(req.deployment_name, namespace)
            if mount_id is None and req.deployment_name == CLIENT_MOUNT_NAME and req.namespace == _GLOBAL:
                mount_id = self._create_client_mount()
            if mount_id is None:
                hint = ""
                if req.deployment_name.startswith("modal-client-mount-"):
                    hint = (
                        f" This kiln server provides {CLIENT_MOUNT_NAME}: use modal=={MODAL_VERSION} in your "
                        "client, or set MODAL_SYNC_ENTRYPOINT=1 to upload your client's own package."
                    )
                raise NotFound(f"Mount {req.deployment_name!r} not found.{hint}")
        else:
            files = [MountFile(f.filename, f.sha256_hex, f.mode or 0o644) for f in req.files]
            name = req.deployment_name or None
            if (
                name
                and creation == api_pb2.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS
                and mounts.lookup(name, namespace)
            ):
                raise AlreadyExists(f"Mount {name!r} already exists")
            mount_id = mounts.create(files, name=name, namespace=namespace if name else "")
        return api_pb2.MountGetOrCreateResponse(
            mount_id=mount_id,
            handle_metadata=api_pb2.MountHandleMetadata(
                content_checksum_sha256_hex=mounts.checksum(mount_id)
            ),
        )

    def _create_client_mount(self) -> str:
        """The `modal` package this server has installed, as containers expect it under /pkg."""
        files = []
        for package in _CLIENT_PACKAGES:
            base = client_package_dir(package)
            for root, dirs, names in os.walk(base):
                dirs[:] = [d for d in dirs if d != "__pycache__"]
                for name in names:
                    if name.endswith((".pyc", ".pyo")):
                        continue
                    path = Path(root) / name
                    digest = self.core.blobs.put_file(path.read_bytes())
                    files.append(MountFile(f"/pkg/{package}/{path.relative_to(base)}", digest, 0o644))
        return self.core.mounts.create(files, name=CLIENT_MOUNT_NAME, namespace=str(_GLOBAL))

    # -- secrets -------------------------------------------------------------------------------

    async def SecretGetOrCreate(
        self, req: api_pb2.SecretGetOrCreateRequest, ctx: CallContext
    ) -> api_pb2.SecretGetOrCreateResponse:
        secrets = self.core.secrets
        name = req.deployment_name
        env = req.environment_name
        creation = req.object_creation_type
        if name and creation == api_pb2.OBJECT_CREATION_TYPE_UNSPECIFIED:
            secret = secrets.lookup(name, env)
            if secret is None:
                raise NotFound(
                    f"Secret {name!r} not found. Create it with `modal secret create {name} KEY=value`."
                )
            missing = [k for k in req.required_keys if k not in secret.env]
            if missing:
                raise NotFound(f"Secret {name!r} is missing the required keys {', '.join(missing)}")
        else:
            if (
                name
                and creation == api_pb2.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS
                and secrets.lookup(name, env) is not None
            ):
                raise AlreadyExists(f"Secret {name!r} already exists")
            owner = ""
            if not name and creation == api_pb2.OBJECT_CREATION_TYPE_ANONYMOUS_OWNED_BY_APP:
                owner = self.core.app(req.app_id).app_id  # NOT_FOUND for an app that does not exist
            elif not name:
                owner = EPHEMERAL
            secret = secrets.create(dict(req.env_dict), name, env, owner)
        return api_pb2.SecretGetOrCreateResponse(
            secret_id=secret.secret_id,
            metadata=api_pb2.SecretMetadata(
                name=name,
                keys=sorted(secret.env),
                creation_info=api_pb2.CreationInfo(created_at=secret.created_at),
            ),
        )

    async def SecretList(
        self, req: api_pb2.SecretListRequest, ctx: CallContext
    ) -> api_pb2.SecretListResponse:
        """`modal secret list`: newest first, in pages (`created_before` is strictly older)."""
        secrets = self.core.secrets.named(
            req.environment_name, req.pagination.max_objects, req.pagination.created_before
        )
        return api_pb2.SecretListResponse(
            environment_name=req.environment_name or "main",
            items=[
                api_pb2.SecretListItem(
                    label=secret.name,
                    created_at=secret.created_at,
                    environment_name=req.environment_name,
                    secret_id=secret.secret_id,
                    metadata=api_pb2.SecretMetadata(
                        name=secret.name,
                        keys=sorted(secret.env),
                        creation_info=api_pb2.CreationInfo(created_at=secret.created_at),
                    ),
                )
                for secret in secrets
            ],
        )

    async def SecretDelete(self, req: api_pb2.SecretDeleteRequest, ctx: CallContext) -> object:
        if self.core.secrets.get(req.secret_id) is None:
            raise NotFound(f"Secret {req.secret_id[:64]} not found")
        self.core.secrets.delete(req.secret_id)
        return empty()


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp
