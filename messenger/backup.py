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

# Where the embedded S3 server keeps objects under the data dir (one file per object).
FILES_DIR = "s3"


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
    source_files = data_dir / FILES_DIR
    if source_files.is_dir():
        files, file_bytes = _copy_tree(source_files, destination / FILES_DIR)
    return BackupReport(destination, (destination / DATABASE_FILE).stat().st_size, files, file_bytes)


def _copy_tree(source: Path, target: Path) -> tuple[int, int]:
    """Each file to a temporary name, then renamed: a file in the copy is always whole.

    The embedded S3 server writes a completed upload's object atomically (to a temporary file,
    then renamed), so each source file read here is a whole object too.
    """
    copied = size = 0
    for folder, _, names in os.walk(source):
        into = target / Path(folder).relative_to(source)
        into.mkdir(parents=True, exist_ok=True)
        for name in names:
            partial = into / f".{name}.backup-partial"
            try:
                shutil.copy2(Path(folder) / name, partial)
            except FileNotFoundError:
                continue  # deleted while the backup ran
            partial.replace(into / name)
            copied += 1
            size += (into / name).stat().st_size
    return copied, size
