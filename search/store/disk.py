"""Free space on the disk a store writes to: a full disk met halfway through a memory-mapped
write is a crash (SIGBUS), so writers check before they start."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from search.store.base import StoreError


def mount_of(path: str | Path) -> str:
    """The mount point holding `path` (or the nearest folder above it that exists)."""
    path = Path(path).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return str(path)


def require_free_space(where: str | Path, need: int, what: str) -> None:
    """Refuse, in one line, to start writing `need` bytes where fewer are free."""
    folder = Path(where).expanduser().absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < need:
        raise StoreError(
            f"no space left on {mount_of(folder)} for {what}: need ~{need / 1e6:,.0f} MB, "
            f"{free / 1e6:,.0f} MB free"
        )
