"""Object IDs: `<prefix>-<22 base62 chars>`."""

import os
import re
import subprocess
import sys

from kiln.ids import new_id, stable_id

SHAPE = re.compile(r"(?P<prefix>[a-z]+)-[A-Za-z0-9]{22}")


def test_new_id_shape() -> None:
    for prefix in ("ap", "fu", "in", "bl"):
        match = SHAPE.fullmatch(new_id(prefix))
        assert match is not None and match["prefix"] == prefix


def test_new_ids_are_unique() -> None:
    assert len({new_id("ta") for _ in range(1000)}) == 1000


def test_stable_id_shape() -> None:
    match = SHAPE.fullmatch(stable_id("im", "some key"))
    assert match is not None and match["prefix"] == "im"


def test_stable_id_is_deterministic() -> None:
    assert stable_id("im", "layer-abc") == stable_id("im", "layer-abc")


def test_stable_id_differs_by_key() -> None:
    keys = [f"key-{i}" for i in range(200)] + ["", "a", "b"]
    assert len({stable_id("mo", k) for k in keys}) == len(keys)


def test_stable_id_keeps_the_prefix() -> None:
    assert stable_id("im", "k").startswith("im-")
    assert stable_id("fu", "k").startswith("fu-")


def test_stable_id_is_the_same_in_another_process() -> None:
    # Same on every machine and every run: no per-process hash seed may leak in.
    code = "from kiln.ids import stable_id; print(stable_id('im', 'layer-abc'))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    argv = [sys.executable, "-c", code]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.strip() == stable_id("im", "layer-abc")
