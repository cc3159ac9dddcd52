"""What a base image is made of: layers filled on the host or by a step in a sandbox."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kiln.images.steps import ImageConfig, Step

# Fills a layer with files on the host (not in a sandbox); may return the image's config when
# it is only known once the files are there (a registry image's).
Materializer = Callable[[Path], ImageConfig | None]


@dataclass
class BaseLayer:
    """A layer of a base image: either files made on the host, or a step run in a sandbox."""

    name: str  # enters the layer key
    materialize: Materializer | None = None
    step: Step | None = None
    refresh: bool = False  # force_build fetches it again (registry images); host snapshots stay
    # Its files include hard links to the host's own: their owners must not change.
    links_host_files: bool = False


@dataclass
class BaseImage:
    reference: str
    layers: list[BaseLayer]
    config: ImageConfig
    notice: str = ""  # logged to the build output when a substitution was made
