"""Volume RPCs (the client's v2 protocol), translated to the volumes room (`kiln.storage.volumes`).

Files travel over kiln's HTTP port in 8 MiB blocks at URLs this module signs
(`kiln.gateway.volume_blocks`): VolumePutFiles2 answers the blocks the volume lacks with upload
URLs, and the client repeats the call once they are up; VolumeGetFile2 answers one download URL
per block of the range asked for. Containers see volumes as bind-mounted directories
(`mount_binds`), one live tree shared by all: commit syncs it to disk, reload has nothing to
fetch (but refuses, as Modal does, while files under the mount are open).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Iterator

from modal_proto import api_pb2

from kiln.containers import Bind
from kiln.containers.processes import open_paths
from kiln.core.core import Core
from kiln.errors import InvalidRequest, KilnError, NotFound, Unsupported
from kiln.frontends.modal.dispatch import AlreadyExists, CallContext, empty
from kiln.frontends.modal.named_objects import creation_info, environment_of, get_or_create, page_of
from kiln.frontends.modal.registry import Registry
from kiln.gateway.volume_blocks import block_put_route, file_read_route
from kiln.storage.named import StoredObject
from kiln.storage.volume_tree import Entry, FileExists, block_ranges, join, split_path
from kiln.storage.volumes import FileUpload

V2 = api_pb2.VOLUME_FS_VERSION_V2
_LIST_BATCH = 100

NFS_UNSUPPORTED = (
    "modal.NetworkFileSystem is superseded on Modal and kiln does not serve it: use modal.Volume "
    "instead (`modal.Volume.from_name(name, create_if_missing=True)`, mounted with `volumes={path: vol}`). "
    "On kiln a mounted Volume is one live directory shared by every container, so writes are visible "
    "to the others at once, as with a network file system."
)


class OpenFiles(KilnError):
    """A reload while files under the mount are open: FAILED_PRECONDITION, which the client turns
    into its RuntimeError for reload."""


def _metadata(obj: StoredObject) -> api_pb2.VolumeMetadata:
    return api_pb2.VolumeMetadata(version=V2, name=obj.name, creation_info=creation_info(obj))


class VolumeHandlers:
    def __init__(self, core: Core, registry: Registry) -> None:
        self.core = core
        self.registry = registry
        self.volumes = core.volumes

    # -- the objects ---------------------------------------------------------------------------

    async def VolumeGetOrCreate(
        self, req: api_pb2.VolumeGetOrCreateRequest, ctx: CallContext
    ) -> api_pb2.VolumeGetOrCreateResponse:
        if req.version == api_pb2.VOLUME_FS_VERSION_V1:
            raise InvalidRequest(
                "kiln serves Volumes of version 2 only (the client's default); leave `version` out, or "
                "pass version=2 (`modal volume create NAME --version 2`)"
            )
        fix = (
            f"Create it with `modal.Volume.from_name({req.deployment_name!r}, create_if_missing=True)` "
            f"or `modal volume create {req.deployment_name}`."
        )
        obj = get_or_create(
            self.core,
            self.volumes,
            ctx,
            req.deployment_name,
            req.environment_name,
            req.object_creation_type,
            fix,
        )
        self.volumes.tree(obj.object_id)  # its directory, before anyone mounts it
        return api_pb2.VolumeGetOrCreateResponse(volume_id=obj.object_id, version=V2, metadata=_metadata(obj))

    async def VolumeGetById(
        self, req: api_pb2.VolumeGetByIdRequest, ctx: CallContext
    ) -> api_pb2.VolumeGetByIdResponse:
        obj = self.volumes.info(req.volume_id)
        return api_pb2.VolumeGetByIdResponse(volume_id=obj.object_id, metadata=_metadata(obj))

    async def VolumeList(
        self, req: api_pb2.VolumeListRequest, ctx: CallContext
    ) -> api_pb2.VolumeListResponse:
        return api_pb2.VolumeListResponse(
            items=[
                api_pb2.VolumeListItem(
                    label=o.name, volume_id=o.object_id, created_at=o.created_at, metadata=_metadata(o)
                )
                for o in page_of(self.volumes, req.environment_name, req.pagination)
            ],
            environment_name=environment_of(req.environment_name),
        )

    async def VolumeDelete(self, req: api_pb2.VolumeDeleteRequest, ctx: CallContext) -> object:
        await asyncio.to_thread(self.volumes.delete, req.volume_id)
        return empty()

    async def VolumeHeartbeat(self, req: api_pb2.VolumeHeartbeatRequest, ctx: CallContext) -> object:
        self.volumes.heartbeat(req.volume_id)
        return empty()

    async def VolumeRename(self, req: api_pb2.VolumeRenameRequest, ctx: CallContext) -> object:
        if not req.name:
            raise InvalidRequest("a Volume's new name may not be empty")
        try:
            self.volumes.rename(req.volume_id, req.name)
        except FileExistsError:
            raise AlreadyExists(
                f"a Volume named {req.name!r} already exists in this environment; pick another name or "
                f"delete it first (`modal volume delete {req.name}`)"
            ) from None
        return empty()

    # -- inside containers ---------------------------------------------------------------------

    async def VolumeCommit(
        self, req: api_pb2.VolumeCommitRequest, ctx: CallContext
    ) -> api_pb2.VolumeCommitResponse:
        # Containers write the shared tree itself: committing is making it durable.
        await asyncio.to_thread(self.volumes.sync, req.volume_id)
        return api_pb2.VolumeCommitResponse(skip_reload=True)

    async def VolumeReload(self, req: api_pb2.VolumeReloadRequest, ctx: CallContext) -> object:
        self.volumes.info(req.volume_id)
        if ctx.task_id:
            await asyncio.to_thread(self._refuse_open_files, ctx.task_id, req.volume_id)
        return empty()

    def _refuse_open_files(self, task_id: str, volume_id: str) -> None:
        """Modal's rule: a reload fails while the container has files under the mount open (a
        shared tree needs no reload, but code written for Modal should fail here as it would)."""
        try:
            task = self.core.task(task_id)
        except KilnError:
            return
        known = self.registry.functions.get(task.function.function_id)
        mounts = (
            [m.mount_path for m in known.function.volume_mounts if m.volume_id == volume_id]
            if (known is not None and known.function is not None)
            else []
        )
        pid = getattr(task.container, "pid", None)  # a sandbox's helper; runtimes without processes have none
        if not mounts or not isinstance(pid, int):
            return
        mount = mounts[0].rstrip("/")
        for path in open_paths(pid):
            if path == mount or path.startswith(mount + "/"):
                raise OpenFiles(
                    f"reload failed: there are open files preventing the operation ({path} is open, or is a "
                    "working directory, in this container); close files under the volume's mount before "
                    "reloading"
                )

    # -- files ---------------------------------------------------------------------------------

    async def VolumePutFiles2(
        self, req: api_pb2.VolumePutFiles2Request, ctx: CallContext
    ) -> api_pb2.VolumePutFiles2Response:
        volume_id = req.volume_id
        tree = self.volumes.tree(volume_id)
        uploads = [
            FileUpload.of(f.path, f.size, f.mode, [b.contents_sha256 for b in f.blocks]) for f in req.files
        ]
        overwrite = not req.disallow_overwrite_existing_files
        try:
            if not overwrite:
                for upload in uploads:
                    tree.check_absent(upload.parts)
            missing = await asyncio.to_thread(
                self.volumes.missing_blocks, volume_id, [d for u in uploads for d in u.blocks]
            )
            if missing:
                return api_pb2.VolumePutFiles2Response(
                    missing_blocks=self._upload_urls(volume_id, uploads, missing)
                )
            await asyncio.to_thread(self.volumes.put_files, volume_id, uploads, overwrite)
        except FileExists as exc:
            raise AlreadyExists(str(exc)) from None
        return api_pb2.VolumePutFiles2Response()

    def _upload_urls(
        self, volume_id: str, uploads: list[FileUpload], missing: set[bytes]
    ) -> list[api_pb2.VolumePutFiles2Response.MissingBlock]:
        """One upload URL per missing block (a block in several places is uploaded once)."""
        answer = []
        for file_index, upload in enumerate(uploads):
            for block_index, digest in enumerate(upload.blocks):
                if digest in missing:
                    missing.discard(digest)
                    url = self.core.signed_urls.request(block_put_route(volume_id, digest.hex()), {})
                    answer.append(
                        api_pb2.VolumePutFiles2Response.MissingBlock(
                            file_index=file_index, block_index=block_index, put_url=url
                        )
                    )
        return answer

    async def VolumeGetFile2(
        self, req: api_pb2.VolumeGetFile2Request, ctx: CallContext
    ) -> api_pb2.VolumeGetFile2Response:
        parts = split_path(req.path)
        tree = self.volumes.tree(req.volume_id)
        fd = await asyncio.to_thread(tree.open_file, parts)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if req.start > st.st_size:
            raise InvalidRequest(f"{join(parts)!r} has {st.st_size} bytes; cannot read from byte {req.start}")
        length = st.st_size - req.start if req.len == 0 else min(req.len, st.st_size - req.start)
        identity = {"path": join(parts).encode().hex(), "ino": str(st.st_ino), "mtime": str(st.st_mtime_ns)}
        route = file_read_route(req.volume_id)
        urls = [
            self.core.signed_urls.request(route, {**identity, "start": str(offset), "len": str(n)})
            for offset, n in block_ranges(req.start, length)
        ]
        return api_pb2.VolumeGetFile2Response(get_urls=urls, size=st.st_size, start=req.start, len=length)

    async def VolumeListFiles2(
        self, req: api_pb2.VolumeListFiles2Request, ctx: CallContext
    ) -> AsyncIterator[api_pb2.VolumeListFiles2Response]:
        """Streamed in batches as the tree is walked (a huge tree is never listed in memory)."""
        tree = self.volumes.tree(req.volume_id)
        entries = tree.entries(split_path(req.path), req.recursive)
        left = req.max_entries or -1
        while left != 0:
            batch = await asyncio.to_thread(
                _next_entries, entries, _LIST_BATCH if left < 0 else min(left, _LIST_BATCH)
            )
            if not batch:
                return
            left = left - len(batch) if left > 0 else left
            yield api_pb2.VolumeListFiles2Response(entries=batch)

    async def VolumeRemoveFile2(self, req: api_pb2.VolumeRemoveFile2Request, ctx: CallContext) -> object:
        tree = self.volumes.tree(req.volume_id)
        await asyncio.to_thread(tree.remove, split_path(req.path), req.recursive)
        return empty()

    async def VolumeCopyFiles2(self, req: api_pb2.VolumeCopyFiles2Request, ctx: CallContext) -> object:
        tree = self.volumes.tree(req.volume_id)
        sources = [split_path(p) for p in req.src_paths]
        try:
            await asyncio.to_thread(tree.copy, sources, split_path(req.dst_path), req.recursive)
        except FileExists as exc:
            raise AlreadyExists(str(exc)) from None
        return empty()

    # -- what kiln does not serve --------------------------------------------------------------

    async def SharedVolumeGetOrCreate(
        self, req: api_pb2.SharedVolumeGetOrCreateRequest, ctx: CallContext
    ) -> object:
        raise Unsupported(NFS_UNSUPPORTED)

    async def SharedVolumeList(self, req: api_pb2.SharedVolumeListRequest, ctx: CallContext) -> object:
        raise Unsupported(NFS_UNSUPPORTED)


def _next_entries(entries: Iterator[Entry], n: int) -> list[api_pb2.FileEntry]:
    return [
        api_pb2.FileEntry(path=e.path, type=e.type, mtime=e.mtime, size=e.size)  # type: ignore[arg-type]
        for e in itertools.islice(entries, n)
    ]


# --- functions that mount volumes ---------------------------------------------------------------


def check_mounts(core: Core, function: api_pb2.Function | api_pb2.FunctionOptions) -> None:
    """Refuse, when a function is created, mounts kiln cannot give it: volumes that do not exist,
    paths that are not plain absolute paths, and cloud bucket mounts."""
    for bucket in function.cloud_bucket_mounts:
        raise Unsupported(
            f"CloudBucketMount of {bucket.bucket_name!r} at {bucket.mount_path} is not supported by kiln: it "
            "would need a FUSE driver for the bucket (mountpoint-s3, gcsfuse) and its credentials inside the "
            "sandbox, which kiln does not provide. Copy the data into a modal.Volume (`modal volume put`) and "
            "mount that instead, or read the bucket with its own client library in your function."
        )
    for mount in function.volume_mounts:
        path = mount.mount_path
        if not path.startswith("/") or split_path(path) == () or ".." in path.split("/"):
            raise InvalidRequest(f"a Volume's mount path must be an absolute path below '/', not {path!r}")
        split_path(mount.sub_path)  # refuses '..'
        try:
            core.volumes.info(mount.volume_id)
        except NotFound:
            raise NotFound(
                f"the Volume {mount.volume_id} mounted at {path} does not exist (it was deleted?); create it "
                "again with `modal.Volume.from_name(name, create_if_missing=True)`"
            ) from None


def mount_binds(core: Core, function: api_pb2.Function) -> list[Bind]:
    """The binds that give a container the function's volumes (made when it starts)."""
    binds = []
    for mount in function.volume_mounts:
        try:
            source = core.volumes.mount_source(mount.volume_id, mount.sub_path)
        except KilnError as exc:
            raise InvalidRequest(
                f"cannot mount the Volume {mount.volume_id} at {mount.mount_path}: {exc}"
            ) from exc
        binds.append(Bind(source, mount.mount_path, read_only=mount.read_only, follow_links=False))
    return binds
