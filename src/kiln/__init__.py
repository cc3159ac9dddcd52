"""kiln: an open, self-hosted backend for apps written with the official Modal client."""

from kiln.errors import (
    ContainerStartError,
    ImageBuildError,
    InvalidRequest,
    KilnError,
    LimitExceeded,
    NotFound,
    SandboxUnavailable,
    ServerUnavailable,
    Unsupported,
)

__version__ = "0.1.0"

__all__ = [
    "ContainerStartError",
    "ImageBuildError",
    "InvalidRequest",
    "KilnError",
    "LimitExceeded",
    "NotFound",
    "SandboxUnavailable",
    "ServerUnavailable",
    "Unsupported",
    "__version__",
]
