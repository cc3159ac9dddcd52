"""Layer keys: a hash of what a layer is made of, never of when or where it was built."""

from __future__ import annotations

import hashlib
import json


def layer_key(parent: str | None, step: str, inputs: dict[str, str] | None = None) -> str:
    """The key of the layer made by `step` on top of `parent`.

    `inputs` names everything else the step reads (context file digests, build secret IDs, the
    base provider's identity); the result is the same on any machine for the same inputs.
    """
    canonical = json.dumps(
        {"parent": parent or "", "step": step, "inputs": dict(sorted((inputs or {}).items()))},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()
