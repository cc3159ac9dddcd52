"""The unsigned, JWT-shaped tokens the client decodes for an input's `idx`."""

import base64
import json
import re

import pytest

from kiln.frontends.modal.calls import input_jwt


def decode(part: str) -> dict[str, object]:
    claims: dict[str, object] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return claims


@pytest.mark.parametrize("idx", [-1, 0, 1, 12345])
def test_three_base64url_parts_with_the_idx(idx: int) -> None:
    token = input_jwt(idx, "in-abc")
    parts = token.split(".")
    assert len(parts) == 3
    for part in parts:
        assert re.fullmatch(r"[A-Za-z0-9_-]*", part), part  # base64url, no padding
    header, payload = decode(parts[0]), decode(parts[1])
    assert header["alg"] == "none"
    assert payload["idx"] == idx


def test_distinct_inputs_get_distinct_tokens() -> None:
    assert input_jwt(0, "in-a") != input_jwt(0, "in-b")
    assert input_jwt(0, "in-a") != input_jwt(1, "in-a")


def test_the_official_client_decodes_it() -> None:
    from modal._utils.jwt_utils import DecodedJwt

    decoded = DecodedJwt.decode_without_verification(input_jwt(7, "in-xyz"))
    assert decoded.payload["idx"] == 7
