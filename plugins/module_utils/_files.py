# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small file helpers the modules share: read a text file that may be missing, write one
atomically and only when it changes."""

from __future__ import annotations

import os


def read_text(path):
    """The file's text, or None when it does not exist."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def write_text(path, content, mode=0o644, uid=0, gid=0):
    """Write *path* atomically (rename of a sibling) when its content, mode or owner differ;
    return whether it changed. Missing parent folders are made (0755)."""
    if read_text(path) == content:
        st = os.stat(path)
        if (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (mode, uid, gid):
            return False
    os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
    tmp = f"{path}.replica-tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(content)
    os.chown(tmp, uid, gid)
    os.chmod(tmp, mode)
    os.rename(tmp, path)
    return True
