"""kiln's configuration, in one place: environment variables with defaults.

KILN_HOME      where state, blobs, layers and containers live (default ~/.kiln)
KILN_HOST      address the servers listen on (default 127.0.0.1)
KILN_PORT      gRPC port for clients (default 0 = any free port for `kiln run`, 50051 for `kiln server`)
KILN_FAL_PORT, KILN_FAL_RUN_PORT  fal's control plane (gRPC) and run host (HTTP) (default 0 = any free)
KILN_LOG       log level of the server (default INFO)
KILN_MAX_CONTAINERS  containers per function when it sets no max_containers (default: CPU cores)
KILN_GPU_FALLBACK    `cpu`: run GPU functions on the CPU (with a warning) where no matching GPU exists
KILN_RESULT_RETENTION  how long calls' results are kept, e.g. `7d`, `12h`, `3600` (default 7d, as Modal)
KILN_HEARTBEAT_GRACE   seconds an ephemeral app lives without its client's heartbeat (default 60)
KILN_EPHEMERAL_OBJECT_GRACE  seconds an ephemeral Dict, Queue or Volume lives without a heartbeat (default 900:
                       three missed beats of the Modal client's 300 s heartbeat)
KILN_QUEUE_MAX_ITEMS   items a Queue partition holds (default 5000, as Modal)
KILN_QUEUE_MAX_ITEM_BYTES  bytes per Queue item (default 1 MiB, as Modal)
KILN_DICT_MAX_ENTRY_BYTES  bytes per Dict entry, key and value together (default 100 MiB)
KILN_CONTAINER_PIDS_MAX   processes and threads one container may run (default 2048)
KILN_CONTAINER_MEMORY_MB  memory ceiling of a container whose function sets no `memory=`
                          (default: half of this machine's memory; 0 = none)
KILN_DEBIAN_MIRROR     where Debian bases come from (default: this machine's apt mirror)
KILN_MAX_MESSAGE_MB    largest gRPC request the server reads (default 64; the client sends larger
                       payloads as blobs)
KILN_MAX_BLOB_GB       largest blob a client may upload (default 5)
KILN_MAX_WEB_BODY_MB   largest request body a web endpoint accepts, else 413 (default 1024; Modal allows
                       4 GiB, but kiln holds a request's body in memory until its call ends)
KILN_TLS_CERT, KILN_TLS_KEY  serve gRPC and HTTP over TLS with this certificate chain and key
KILN_INSECURE          `1`: allow a non-loopback KILN_HOST without TLS (with a warning)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _default_home() -> Path:
    return Path(os.environ.get("KILN_HOME") or Path.home() / ".kiln")


@dataclass(frozen=True)
class Config:
    home: Path = field(default_factory=_default_home)
    host: str = field(default_factory=lambda: os.environ.get("KILN_HOST", "127.0.0.1"))
    port: int = field(default_factory=lambda: int(os.environ.get("KILN_PORT", "0")))
    http_port: int = field(default_factory=lambda: int(os.environ.get("KILN_HTTP_PORT", "0")))
    fal_port: int = field(default_factory=lambda: int(os.environ.get("KILN_FAL_PORT", "0")))
    fal_run_port: int = field(default_factory=lambda: int(os.environ.get("KILN_FAL_RUN_PORT", "0")))
    # Containers one function may run at once unless it sets max_containers: this machine's cores.
    max_containers: int = field(
        default_factory=lambda: int(os.environ.get("KILN_MAX_CONTAINERS", "0")) or os.cpu_count() or 1
    )
    # Run functions that ask for a GPU on the CPU (with a warning) when no matching GPU exists.
    gpu_fallback_cpu: bool = field(default_factory=lambda: os.environ.get("KILN_GPU_FALLBACK", "") == "cpu")
    layer_store_max_gb: float = field(
        default_factory=lambda: float(os.environ.get("KILN_LAYER_STORE_MAX_GB", "50"))
    )
    result_retention: float = field(
        default_factory=lambda: parse_duration(os.environ.get("KILN_RESULT_RETENTION", "7d"))
    )
    heartbeat_grace: float = field(
        default_factory=lambda: float(os.environ.get("KILN_HEARTBEAT_GRACE", "60"))
    )
    max_message_bytes: int = field(
        default_factory=lambda: int(float(os.environ.get("KILN_MAX_MESSAGE_MB", "64")) * 2**20)
    )
    max_blob_bytes: int = field(
        default_factory=lambda: int(float(os.environ.get("KILN_MAX_BLOB_GB", "5")) * 2**30)
    )
    max_web_body_bytes: int = field(
        default_factory=lambda: int(float(os.environ.get("KILN_MAX_WEB_BODY_MB", "1024")) * 2**20)
    )

    tls_cert: str = field(default_factory=lambda: os.environ.get("KILN_TLS_CERT", ""))
    tls_key: str = field(default_factory=lambda: os.environ.get("KILN_TLS_KEY", ""))
    insecure: bool = field(default_factory=lambda: os.environ.get("KILN_INSECURE", "") == "1")

    ephemeral_object_grace: float = field(
        default_factory=lambda: float(os.environ.get("KILN_EPHEMERAL_OBJECT_GRACE", "900"))
    )
    queue_max_items: int = field(default_factory=lambda: int(os.environ.get("KILN_QUEUE_MAX_ITEMS", "5000")))
    queue_max_item_bytes: int = field(
        default_factory=lambda: int(os.environ.get("KILN_QUEUE_MAX_ITEM_BYTES", str(1024 * 1024)))
    )
    dict_max_entry_bytes: int = field(
        default_factory=lambda: int(os.environ.get("KILN_DICT_MAX_ENTRY_BYTES", str(100 * 1024 * 1024)))
    )

    container_pids_max: int = field(
        default_factory=lambda: int(os.environ.get("KILN_CONTAINER_PIDS_MAX", "2048"))
    )
    container_memory_mb: int = field(
        default_factory=lambda: int(os.environ.get("KILN_CONTAINER_MEMORY_MB", "-1"))
    )

    @property
    def default_memory_mb(self) -> int:
        """The memory ceiling of containers that ask for none: half the machine unless set."""
        if self.container_memory_mb >= 0:
            return self.container_memory_mb
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return max(1024, total // 2**20 // 2)

    @property
    def state_db(self) -> Path:
        return self.home / "state.sqlite3"

    @property
    def blobs_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def layers_dir(self) -> Path:
        return self.home / "layers"

    @property
    def run_dir(self) -> Path:
        """Per-process scratch: container upper dirs, sockets. Cleared at start."""
        return self.home / "run"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def deps_dir(self) -> Path:
        return self.home / "deps"

    @property
    def mounts_dir(self) -> Path:
        return self.home / "mounts"

    @property
    def package_cache_dir(self) -> Path:
        """pip's and uv's caches for RUN steps (bound in, never part of a layer)."""
        return self.home / "cache"


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in `90`, `90s`, `15m`, `12h` or `7d`."""
    text = text.strip().lower()
    unit = _UNITS.get(text[-1:], 0)
    try:
        return float(text[:-1]) * unit if unit else float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration; write e.g. 3600, 90m, 12h or 7d") from None


# How this machine reaches package indexes and the network: its CA bundle and proxies. Build
# steps and containers inherit these (as Docker passes its proxy build args), so `pip install`
# works in an image wherever it works on the host. They never enter a layer key.
HOST_NETWORK_ENV = (
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PIP_CERT",
    "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_DEFAULT_TIMEOUT",
    "UV_INDEX_URL", "UV_EXTRA_INDEX_URL", "UV_DEFAULT_INDEX", "UV_NATIVE_TLS",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
)  # fmt: skip


def host_network_env() -> dict[str, str]:
    return {name: os.environ[name] for name in HOST_NETWORK_ENV if os.environ.get(name)}
