"""Shifting files into the containers' id range (root inside = host 100000)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kiln.containers import IdMap

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")


def test_a_tree_is_shifted_into_the_range_and_setuid_bits_survive(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    tool = tmp_path / "bin" / "tool"
    tool.write_text("#!/bin/sh\n")
    os.chmod(tool, 0o4755)
    os.chown(tmp_path / "bin", 0, 0)
    nobody = tmp_path / "nobody"
    nobody.write_text("")
    os.chown(nobody, 65534, 65534)
    (tmp_path / "link").symlink_to("bin/tool")

    IdMap().shift_tree(tmp_path)

    assert (os.lstat(tool).st_uid, os.lstat(tool).st_gid) == (100000, 100000)
    assert stat.S_IMODE(os.lstat(tool).st_mode) == 0o4755
    assert os.lstat(nobody).st_uid == 165534
    assert os.lstat(tmp_path / "link").st_uid == 100000
    assert os.lstat(tmp_path).st_uid == 100000


def test_ids_already_in_the_range_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("")
    os.chown(path, 101000, 101000)
    IdMap().shift_tree(tmp_path)
    assert os.lstat(path).st_uid == 101000


def test_files_linked_elsewhere_keep_their_owner_when_asked(tmp_path: Path) -> None:
    original = tmp_path / "host-file"
    original.write_text("the host's")
    layer = tmp_path / "layer"
    layer.mkdir()
    os.link(original, layer / "linked")
    (layer / "copied").write_text("ours")

    IdMap().shift_tree(layer, skip_linked=True)

    assert os.lstat(original).st_uid == 0  # the host's file is untouched
    assert os.lstat(layer / "copied").st_uid == 100000
    assert os.lstat(layer).st_uid == 100000
