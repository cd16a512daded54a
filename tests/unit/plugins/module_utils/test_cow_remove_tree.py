# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""remove_tree on what is not a subvolume: a folder, a file (a VM disk image), a link."""

from __future__ import annotations

import os

from ansible_collections.replica.cloud.plugins.module_utils._cow import remove_tree


def never(argv):
    raise AssertionError(f"no command expected, got {argv}")


def test_remove_tree_takes_folders_files_and_links(tmp_path):
    folder = tmp_path / "tree"
    (folder / "etc").mkdir(parents=True)
    (folder / "etc" / "hostname").write_text("vm\n")
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * 4096)
    link = tmp_path / "link"
    os.symlink(folder, link)
    for path in (link, folder, disk, tmp_path / "missing"):
        remove_tree(str(path), never)
    assert not os.listdir(tmp_path)
