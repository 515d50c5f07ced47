"""Which archive an index row describes: the archive's own id, whatever path reaches it (issue 12, item 2).

Each host of a lab mounts a shared archive at its own path, and a user may
reach it through a symlink or a bind mount. The archive therefore carries an
id, a random UUID in ``<archive>/.pycomex_index/archive.json``, written once;
``archives.uuid`` finds its row through any of those paths, so they share one
set of rows, one modify journal and one export list. ``archive_roots``
records where each host reaches the archive. An index made before archive
ids (migration 0010) gives the row of the path it is opened through the id
at that open. An archive where archive.json cannot be written (read-only)
stays keyed by ``archives.root``, its path, as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

from pycomex_index.atomic import fsync_folder, temporary_path
from pycomex_index.db import IndexDatabase
from pycomex_index.discovery import INDEX_FOLDER_NAME
from pycomex_index.errors import IndexReadOnlyError
from pycomex_index.paths import this_host

logger = logging.getLogger("pycomex_index")

#: In ``<archive>/.pycomex_index/``: the archive's own id.
ARCHIVE_ID_FILE_NAME = "archive.json"


def archive_identity(root: str) -> str | None:
    """The UUID in ``<root>/.pycomex_index/archive.json``, written now when missing; None when it cannot be.

    Written once: the content goes to a temporary file that is then linked
    to the name, which fails when the name exists, so two hosts opening a new
    archive at the same moment both end up with the one id that won. An
    archive where nothing can be written (read-only) has no id and is known
    by its path, as before.
    """
    import json
    import uuid

    path = os.path.join(root, INDEX_FOLDER_NAME, ARCHIVE_ID_FILE_NAME)
    found = _read_archive_identity(path)
    if found is not None:
        return found
    temporary = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temporary = temporary_path(path)
        with open(temporary, "x") as file:
            json.dump({"uuid": str(uuid.uuid4()), "created_at": time.time()}, file)
            file.flush()
            os.fsync(file.fileno())
        os.link(temporary, path)
        fsync_folder(os.path.dirname(path))
    except FileExistsError:
        pass  # another process wrote it first: its id is the archive's
    except OSError as error:
        logger.debug("cannot write %s (%s): the archive is known by its path", path, error.strerror)
    finally:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
    return _read_archive_identity(path)


def _read_archive_identity(path: str) -> str | None:
    import json
    import uuid

    try:
        with open(path, "rb") as file:
            return str(uuid.UUID(json.loads(file.read())["uuid"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def register_archive(db: IndexDatabase, root: str) -> int:
    """The id of the archive at ``root``: found by the archive's own UUID, else (no archive.json) by its path.

    An index made before archive ids gives the row of this path the archive's
    UUID at its first open here. The root each host reaches the archive at is
    recorded in ``archive_roots``.
    """
    read_only = db.read_only
    identity = archive_identity(root)
    if identity is None:
        return _register_archive_by_root(db, root, read_only)
    row = db.fetch_one("SELECT id FROM archives WHERE uuid = :uuid", {"uuid": identity})
    if row is None:
        if read_only:
            return _register_archive_by_root(db, root, read_only)

        def adopt_or_add() -> None:
            db.execute(
                "UPDATE archives SET uuid = :uuid WHERE root = :root AND uuid IS NULL", {"uuid": identity, "root": root}
            )
            # A row of this path with another id was another archive once mounted here: ours gets its own label.
            taken = db.fetch_one("SELECT uuid FROM archives WHERE root = :root", {"root": root})
            label = root if taken is None or taken[0] == identity else f"{root}#{identity}"
            db.execute(
                "INSERT INTO archives (root, uuid, created_at) VALUES (:root, :uuid, :now) ON CONFLICT DO NOTHING",
                {"root": label, "uuid": identity, "now": time.time()},
            )

        db.run_in_transaction(adopt_or_add)
        row = db.fetch_row("SELECT id FROM archives WHERE uuid = :uuid", {"uuid": identity})  # just added
    archive_id = row[0]
    if not read_only:
        _record_root(db, archive_id, root)
    return archive_id


def _record_root(db: IndexDatabase, archive_id: int, root: str) -> None:
    """Note that this host reaches the archive at ``root`` (a read first: most opens find it noted)."""
    key = {"archive_id": archive_id, "host": this_host(), "root": root}
    if (
        db.fetch_one(
            "SELECT 1 FROM archive_roots WHERE archive_id = :archive_id AND host = :host AND root = :root", key
        )
        is None
    ):
        db.run_in_transaction(
            lambda: db.execute(
                "INSERT INTO archive_roots (archive_id, host, root, seen_at) VALUES (:archive_id, :host, :root, :now) "
                "ON CONFLICT DO NOTHING",
                {**key, "now": time.time()},
            )
        )


def _register_archive_by_root(db: IndexDatabase, root: str, read_only: bool) -> int:
    row = db.fetch_one("SELECT id FROM archives WHERE root = :root", {"root": root})
    if row:
        return row[0]
    if read_only:
        raise IndexReadOnlyError(f"the index {db.where} is read-only and does not know the archive {root}")
    with db.transaction():
        db.execute(
            "INSERT INTO archives (root, created_at) VALUES (:root, :now) ON CONFLICT (root) DO NOTHING",
            {"root": root, "now": time.time()},
        )
    return db.fetch_row("SELECT id FROM archives WHERE root = :root", {"root": root})[0]  # just added
