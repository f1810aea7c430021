"""`messenger backup DEST`: a consistent copy of the embedded default's data (database and files) while it serves.

DEST becomes a data directory of its own: restoring is starting the service with
MESSENGER_DATA_DIR pointing at it (or at a copy of it), see docs/operations.md.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from core.sqlite import backup_file
from messenger.database import DATABASE_FILE

log = logging.getLogger(__name__)

# What the embedded S3 server keeps under the data dir (attachments/embedded_s3.py): the objects,
# one file per object, and the install's key pair. Its port, pid file and log are remade at start.
FILES_DIR = "s3"
KEPT_FILES = ("objects", "credentials.json")


def _in_progress(name: str) -> bool:
    """nanio's scratch files: an object being written (`.tmp.<uuid>`), a multipart assembly (`*.tmp`)."""
    return name.startswith(".tmp.") or name.endswith(".tmp")


@dataclass(frozen=True)
class BackupReport:
    destination: Path
    database_bytes: int
    files: int
    file_bytes: int

    def summary(self) -> str:
        return (
            f"backed up {DATABASE_FILE} ({self.database_bytes:,} bytes) and {self.files:,} files"
            f" ({self.file_bytes:,} bytes) to {self.destination}"
        )


def backup(data_dir: Path, destination: Path) -> BackupReport:
    """Copy the database first, then the files.

    In that order every object a copied record needs was already in place when the database was
    copied (an upload's object exists before `complete` records it), so it is in the copy too,
    unless it was deleted in between (a rejected, expired or quarantined file). Objects created
    after the database copy are copied too, and stay unreferenced.
    """
    if not (data_dir / DATABASE_FILE).is_file():
        raise FileNotFoundError(f"no database at {data_dir / DATABASE_FILE} (is MESSENGER_DATA_DIR right?)")
    if destination.exists() and any(destination.iterdir()):
        raise FileExistsError(f"{destination} is not empty; back up into a new directory")
    destination.mkdir(parents=True, exist_ok=True)
    backup_file(data_dir / DATABASE_FILE, destination / DATABASE_FILE)
    files = file_bytes = 0
    for kept in KEPT_FILES:
        source = data_dir / FILES_DIR / kept
        if source.is_dir():
            copied, size = _copy_tree(source, destination / FILES_DIR / kept)
        elif source.is_file():
            copied, size = _copy_tree(source.parent, destination / FILES_DIR, only=source.name)
        else:
            continue
        files, file_bytes = files + copied, file_bytes + size
    return BackupReport(destination, (destination / DATABASE_FILE).stat().st_size, files, file_bytes)


def _copy_tree(source: Path, target: Path, *, only: str | None = None) -> tuple[int, int]:
    """Each file to a temporary name, then renamed: a file in the copy is always whole.

    The embedded S3 server writes a completed upload's object atomically (fsync of a `.tmp.*`
    file, then a rename into place), so each object read here is whole too; its scratch files are
    skipped.
    """
    copied = size = 0
    for folder, subfolders, names in os.walk(source):
        if only is not None:
            subfolders.clear()
            names = [n for n in names if n == only]
        into = target / Path(folder).relative_to(source)
        into.mkdir(parents=True, exist_ok=True)
        for name in names:
            if _in_progress(name):
                continue
            partial = into / f".{name}.backup-partial"
            try:
                shutil.copy2(Path(folder) / name, partial)
            except FileNotFoundError:
                continue  # deleted while the backup ran
            partial.replace(into / name)
            copied += 1
            size += (into / name).stat().st_size
    return copied, size
