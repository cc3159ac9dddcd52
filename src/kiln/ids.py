"""Object IDs in the shape the Modal client expects: `<prefix>-<22 base62 chars>`."""

import hashlib
import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    """A fresh random ID, e.g. `ap-3kF9…`."""
    return f"{prefix}-" + "".join(secrets.choice(_ALPHABET) for _ in range(22))


def stable_id(prefix: str, key: str) -> str:
    """An ID derived from `key`: the same key always gives the same ID (images, bound functions)."""
    number = int.from_bytes(hashlib.sha256(key.encode()).digest(), "big")
    chars = []
    for _ in range(22):
        number, digit = divmod(number, len(_ALPHABET))
        chars.append(_ALPHABET[digit])
    return f"{prefix}-" + "".join(chars)
