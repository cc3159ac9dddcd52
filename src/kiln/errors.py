"""Every error kiln shows a user, in one tree. Each message names the fix.

    KilnError
    ├── InvalidRequest       the request itself is wrong (bad argument, bad spec)
    ├── NotFound             a named or identified object does not exist
    ├── LimitExceeded        a size or count limit is reached (a full queue partition)
    ├── Unsupported          a real feature kiln does not implement (yet)
    ├── ImageBuildError      a build step failed (command, exit code, log tail)
    ├── ContainerStartError  a container could not be started
    ├── ServerUnavailable    no container of a server became ready to take a request
    └── SandboxUnavailable   this machine cannot run sandboxes (bubblewrap, overlayfs, root)

Frontends translate these into their protocol's status codes; errors of other libraries are
wrapped at the edge (`raise KilnError(...) from exc`) and never leak to users.
"""


class KilnError(Exception):
    """Base of every error kiln reports to a user."""


class InvalidRequest(KilnError):
    """The request is malformed or asks for something impossible."""


class NotFound(KilnError):
    """A named or identified object does not exist."""


class LimitExceeded(KilnError):
    """A limit is reached for now (a full queue partition): retrying later may succeed."""


class Unsupported(KilnError):
    """A feature of the client that kiln does not implement."""


class ImageBuildError(KilnError):
    """An image build step failed."""


class ContainerStartError(KilnError):
    """A container could not be started."""


class ServerUnavailable(KilnError):
    """No container of a server (`@app.server`) became ready to take a request in time."""


class SandboxUnavailable(KilnError):
    """This machine lacks what sandboxes need (bubblewrap, overlayfs, root)."""
