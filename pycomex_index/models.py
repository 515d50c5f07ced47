"""The index schema as SQLAlchemy 2.x models.

The models are the reference for the schema; Alembic migrations create and
upgrade it (a test checks the migrated database matches these models). The
hot query paths use plain SQL on the same tables, so loading these models is
never on the start-up path of a read command.

Layout, for speed: ``experiments`` keeps narrow columns (what list, tail,
overview and the sync need); ``experiment_fields`` the two small JSON
documents nearly every ``--select`` expression needs (the metadata's
top-level keys but the big ones, and the parameter values). The full 3-8 KB
document is not copied: storing it made the index six times larger and a
first build a third slower, for the rare expression that reads
``m['description']`` or ``m['parameters']``; those read the file itself.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


#: Paths compare and sort bytewise on every backend (SQLite does by itself; PostgreSQL needs collation "C"),
#: so "the rows below folder F" is the range F/ .. F0 and listings order paths alike (migration 0007).
PathText = Text().with_variant(Text(collation="C"), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Archive(Base):
    """One archive (an index may serve several) and when it was last synced.

    ``uuid`` is the id in the archive's own ``.pycomex_index/archive.json``: the
    same archive through any mount point, symlink or bind mount (migration 0010).
    ``root`` is where it was first opened; an archive without archive.json
    (read-only) is found by it.
    """

    __tablename__ = "archives"
    __table_args__ = (Index("ix_archives_uuid", "uuid", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    root: Mapped[str] = mapped_column(PathText, unique=True)
    uuid: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[float] = mapped_column(Float)
    last_sync_at: Mapped[float | None] = mapped_column(Float)
    last_sync_seconds: Mapped[float | None] = mapped_column(Float)


class ArchiveRoot(Base):
    """Where a host reaches an archive: each host of a lab may mount the share at its own path."""

    __tablename__ = "archive_roots"

    archive_id: Mapped[int] = mapped_column(ForeignKey("archives.id", ondelete="CASCADE"), primary_key=True)
    host: Mapped[str] = mapped_column(Text, primary_key=True)
    root: Mapped[str] = mapped_column(PathText, primary_key=True)
    seen_at: Mapped[float] = mapped_column(Float)


class Experiment(Base):
    """One experiment folder: the figures commands show and what tells whether it changed on disk."""

    __tablename__ = "experiments"
    __table_args__ = (
        UniqueConstraint("archive_id", "rel_path"),
        # Serves list and tail (ordered by start time) without touching the table. On PostgreSQL it is built
        # with start_time NULLS FIRST, the order SQLite has (migration 0013): a model cannot say so for one
        # dialect only (SQLite refuses NULLS in an index), so tests/test_postgresql_migrations.py expects it.
        Index(
            "ix_experiments_listing",
            "archive_id",
            "start_time",
            "rel_path",
            "outcome",
            "duration",
        ),
        Index("ix_experiments_outcome", "archive_id", "outcome"),
        # The overview's extremes: MIN/MAX over an index is one lookup (start times use ix_experiments_listing).
        Index("ix_experiments_duration", "archive_id", "duration"),
        Index("ix_experiments_parameter_count", "archive_id", "parameter_count"),
        Index("ix_experiments_asset_count", "archive_id", "asset_count"),
        Index("ix_experiments_namespace", "archive_id", "namespace"),
        # Serves the sync's comparison of every stored file stamp with the disk.
        Index("ix_experiments_stamps", "archive_id", "rel_path", "meta_mtime_ns", "meta_size", "folder_mtime_ns"),
        # scan's default grouping, in the index's order and off the index alone (migration 0014).
        Index("ix_experiments_prefix", "archive_id", "prefix", "outcome", "end_time", "duration", "disk_usage"),
        # The runs whose status says running, which every command that shows their state judges, with what
        # judging reads (migrations 0014, 0015).
        Index(
            "ix_experiments_running",
            "archive_id",
            "outcome",
            "rel_path",
            "start_time",
            "meta_mtime_ns",
            "folder_mtime_ns",
            sqlite_where=text("outcome = 'running'"),
            postgresql_where=text("outcome = 'running'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    archive_id: Mapped[int] = mapped_column(ForeignKey("archives.id", ondelete="CASCADE"))
    rel_path: Mapped[str] = mapped_column(PathText)
    namespace: Mapped[str] = mapped_column(PathText)
    name: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))
    status: Mapped[str | None] = mapped_column(Text)
    has_error: Mapped[bool | None] = mapped_column()
    error_type: Mapped[str | None] = mapped_column(Text)
    start_time: Mapped[float | None] = mapped_column(Float)
    end_time: Mapped[float | None] = mapped_column(Float)
    duration: Mapped[float | None] = mapped_column(Float)
    parameter_count: Mapped[int | None] = mapped_column(Integer)
    asset_count: Mapped[int] = mapped_column(Integer)
    disk_usage: Mapped[int] = mapped_column(BigInteger)
    meta_mtime_ns: Mapped[int] = mapped_column(BigInteger)
    meta_size: Mapped[int] = mapped_column(BigInteger)
    folder_mtime_ns: Mapped[int] = mapped_column(BigInteger)
    read_error: Mapped[str | None] = mapped_column(Text)
    #: pycomex's own ``__NAME__`` parameters, a small JSON object (NULL: needs Python's dialect; see migration 0009).
    special_parameters_json: Mapped[str | None] = mapped_column(Text)
    #: ``str()`` of the ``__PREFIX__`` parameter (NULL: none, or not storable; see migration 0014).
    prefix: Mapped[str | None] = mapped_column(Text)


class ExperimentFields(Base):
    """What most ``--select`` expressions read: the metadata's top-level scalars and the parameter values.

    Apart from ``experiments`` so that list, tail, overview and sync scan
    narrow rows; a select scans ~700 bytes per experiment instead of 3-8 KB.
    """

    __tablename__ = "experiment_fields"

    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True)
    summary_json: Mapped[str] = mapped_column(Text)
    parameters_json: Mapped[str] = mapped_column(Text)
    #: The documents are in Python's JSON dialect (NaN, Infinity, integers beyond 64 bits, lone surrogates),
    #: which SQLite's JSON functions reject or cannot hold exactly: SQL leaves these rows to Python.
    needs_python: Mapped[bool] = mapped_column(default=False, server_default=false())


class ParameterName(Base):
    """Every parameter name ``experiment_parameters`` holds, once: its rows carry this small id instead."""

    __tablename__ = "parameter_names"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)


class ExperimentParameter(Base):
    """One scalar parameter value of one experiment, typed, so a ``--select`` on it reads no JSON.

    Filled from the parameter document when it is written (SQLite's
    ``json_each``; see :func:`pycomex_index.rows.store_records`) for the rows
    whose documents are not in Python's dialect. Only numbers, booleans (as
    1/0) and strings have a row: a missing, null, list or dict parameter has
    none, and SQL leaves such a comparison to Python. ``number`` holds a number
    a float represents exactly (NULL for an integer beyond 2**53), ``text`` a
    string. On PostgreSQL the table stays empty: its ``--select`` reads
    parameters in Python (see :mod:`pycomex_index.pushdown`).
    """

    __tablename__ = "experiment_parameters"
    __table_args__ = {"sqlite_with_rowid": False}

    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True)
    name_id: Mapped[int] = mapped_column(ForeignKey("parameter_names.id"), primary_key=True)
    number: Mapped[float | None] = mapped_column(Float)
    text: Mapped[str | None] = mapped_column(Text)


class FolderDigest(Base):
    """A fingerprint of the experiments directly in one folder, as the last sync saw them on disk.

    A read command's sync compares each folder's fingerprint with the one
    stored here and loads and compares the rows of a folder only when they
    differ, instead of every stored row. Every folder that holds indexed
    experiments has a row; any write to its experiments clears the digest
    (NULL: compare this folder), so a digest always describes the rows.
    """

    __tablename__ = "folder_digests"

    archive_id: Mapped[int] = mapped_column(ForeignKey("archives.id", ondelete="CASCADE"), primary_key=True)
    folder: Mapped[str] = mapped_column(PathText, primary_key=True)
    digest: Mapped[str | None] = mapped_column(String(32))


class ExperimentSummary(Base):
    """Counts and sums of the experiments per (outcome, namespace, error kind): what overview and info add up.

    Kept current by SQLite triggers on ``experiments`` (see migration 0005),
    so the figures of a million experiments are a read of a few hundred rows.
    ``error_kind`` is '' for done and running experiments.
    """

    __tablename__ = "experiment_summary"

    archive_id: Mapped[int] = mapped_column(ForeignKey("archives.id", ondelete="CASCADE"), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(16), primary_key=True)
    namespace: Mapped[str] = mapped_column(Text, primary_key=True)
    error_kind: Mapped[str] = mapped_column(Text, primary_key=True)
    experiments: Mapped[int] = mapped_column(Integer)
    disk_usage: Mapped[int] = mapped_column(BigInteger)
    duration_sum: Mapped[float] = mapped_column(Float)
    duration_count: Mapped[int] = mapped_column(Integer)
    parameter_sum: Mapped[int] = mapped_column(BigInteger)
    parameter_known: Mapped[int] = mapped_column(Integer)
    asset_sum: Mapped[int] = mapped_column(BigInteger)


class Export(Base):
    """A ZIP written by ``archive compress``: where, when, how big, its checksum."""

    __tablename__ = "exports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    archive_id: Mapped[int] = mapped_column(ForeignKey("archives.id", ondelete="CASCADE"), index=True)
    zip_path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    experiment_count: Mapped[int] = mapped_column(Integer)


class ExportMember(Base):
    """One experiment inside an export, by path (the export outlives the experiment's deletion)."""

    __tablename__ = "export_members"
    __table_args__ = (Index("ix_export_members_rel_path", "rel_path"),)

    export_id: Mapped[int] = mapped_column(ForeignKey("exports.id", ondelete="CASCADE"), primary_key=True)
    rel_path: Mapped[str] = mapped_column(PathText, primary_key=True)
    meta_mtime_ns: Mapped[int] = mapped_column(BigInteger)


class ModifyRun(Base):
    """One ``archive modify`` that changed files: the code it ran and whether it was undone."""

    __tablename__ = "modify_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    archive_id: Mapped[int] = mapped_column(ForeignKey("archives.id", ondelete="CASCADE"), index=True)
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    parameters_code: Mapped[str | None] = mapped_column(Text)
    metadata_code: Mapped[str | None] = mapped_column(Text)
    undone_at: Mapped[float | None] = mapped_column(Float)
    #: The host the modify ran on (this_host()); NULL for modifies journaled before migration 0013.
    host: Mapped[str | None] = mapped_column(Text)


class ModifyJournalEntry(Base):
    """A file's content before a modify changed it, and a fingerprint of what the modify wrote."""

    __tablename__ = "modify_journal"

    run_id: Mapped[int] = mapped_column(ForeignKey("modify_runs.id", ondelete="CASCADE"), primary_key=True)
    rel_path: Mapped[str] = mapped_column(PathText, primary_key=True)
    previous_content: Mapped[str] = mapped_column(Text)
    written_sha256: Mapped[str] = mapped_column(String(64))


class Watcher(Base):
    """The heartbeat of the background watcher of one archive: read commands skip the disk walk while it is fresh.

    Also the watcher's lease (see :mod:`pycomex_index.lease`): the holder is
    (hostname, pid, process_start), and ``lease_expires_at`` is on the database's clock.
    """

    __tablename__ = "watchers"

    archive_id: Mapped[int] = mapped_column(ForeignKey("archives.id", ondelete="CASCADE"), primary_key=True)
    pid: Mapped[int] = mapped_column(Integer)
    hostname: Mapped[str] = mapped_column(Text)
    mode: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float)
    last_change_at: Mapped[float | None] = mapped_column(Float)
    backlog: Mapped[int] = mapped_column(Integer)
    note: Mapped[str | None] = mapped_column(Text)
    #: When the holder process started (``<ticks since boot>@<boot id>``), so a reused pid is not the holder.
    process_start: Mapped[str] = mapped_column(Text, server_default="")
    lease_expires_at: Mapped[float] = mapped_column(Float, server_default="0")


class RunLiveness(Base):
    """A run the pycomex plugin saw start: where its process runs, and when it last said it was alive.

    Written by the experiment process itself (its start hook, then a heartbeat
    every ``heartbeat_interval`` seconds from a background thread) and removed
    when the run ends. Read only for experiments whose status says running,
    to tell a live run from an interrupted one (:mod:`pycomex_index.liveness`).
    Keyed by path, not by experiment id: a sync may replace the experiment's row.
    """

    __tablename__ = "run_liveness"

    archive_id: Mapped[int] = mapped_column(ForeignKey("archives.id", ondelete="CASCADE"), primary_key=True)
    rel_path: Mapped[str] = mapped_column(PathText, primary_key=True)
    hostname: Mapped[str] = mapped_column(Text)
    #: The process's pid namespace (``/proc/self/ns/pid``): a container on the same host name has its own pids.
    pid_namespace: Mapped[str | None] = mapped_column(Text)
    pid: Mapped[int] = mapped_column(Integer)
    #: When the process started (``/proc/<pid>/stat`` starttime + boot time), so a reused pid is told apart.
    process_started_at: Mapped[float | None] = mapped_column(Float)
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float)
    #: Seconds between heartbeats; NULL when the heartbeat is off (then only the host's own check tells).
    heartbeat_interval: Mapped[float | None] = mapped_column(Float)
