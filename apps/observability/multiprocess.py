"""Where counters live so that every process of a role shows on one /metrics.

The supervisor counts in two processes (its web server counts proxy requests, its Celery job
worker ingests reports and so finishes commands) and an environment in three or more (the
heartbeat process, the Celery worker and its pool child, uvicorn), yet each is scraped through
one web process. prometheus_client's multiprocess mode solves that: every process writes its
counters and histograms to its own memory-mapped file in one directory (METRICS_DIR, default
STORAGE_DIR/metrics/<mode>; PROMETHEUS_MULTIPROC_DIR is set from it), and the scraping process
adds all the files up (MultiProcessCollector).

The library leaves two things to us, both done here:

- File names. The library names a process's files after its pid, but the supervisor's web and
  job worker may run in two containers sharing the directory (compose), where pids repeat. A
  process here is `<host>-<pid>` instead (no `_`: the library splits file names on it).
- Clean-up. The library's advice is to wipe the directory when "the application" restarts,
  but no process here is the application: the web server, the job worker, a CLI command and an
  environment's children start and stop independently, so wiping at any one start would throw
  away the live files of the others. Instead every process holds an exclusive flock on
  `owner_<host>-<pid>.lock` for its lifetime (a forked child takes its own), and each process
  start "compacts" under the directory's lock (`directory.lock`): the files of owners whose
  lock is free (dead processes) are added into `counter_archive.db` / `histogram_archive.db`
  (MultiProcessCollector.merge with accumulate=False, the library's way of writing merged data
  back) and removed. So counters stay monotonic across restarts of any one process (no false
  resets for rate()), the directory holds one file per live process plus the archive, and a
  live process's file is never touched. Scrapes read under a shared lock, so they never see a
  compaction half done. Gauges are not kept in files (the apps and environments gauges are
  read from the database at scrape time); a dead process's gauge file, should one appear, is
  removed as mark_process_dead does.

flock works across processes and containers of one kernel on a local directory or volume,
not reliably on NFS: keep METRICS_DIR local. The counts start from zero again only when the
directory is deleted (e.g. a fresh volume).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

log = logging.getLogger("apps.observability")

ARCHIVE = "archive"
_DIR_LOCK = "directory.lock"
_OWNER_PREFIX = "owner_"
_OWNER_SUFFIX = ".lock"
# Files whose types are summed across processes, so a dead process's counts move into the
# archive; other types (gauges) are dropped with their process.
_SUMMED = ("counter", "histogram", "summary")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:64] or "host"


def _ident_of(path: str) -> tuple[str, str]:
    """(type prefix, owner ident) of a data file `<prefix>_<ident>.db`."""
    stem = os.path.basename(path)[: -len(".db")]
    prefix, _, ident = stem.rpartition("_")
    return prefix, ident


def _ours(ident: str) -> bool:
    # `<host>-<pid>` always has a letter or dot; a bare pid is a file written by a process
    # that used the library's default naming: not ours to judge, left alone.
    return bool(ident) and ident != ARCHIVE and not ident.isdigit()


class Store:
    """One process's place in a multiprocess metrics directory."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.host = _host()
        self.pid = 0
        self.ident = ""
        self._owner_fd: int | None = None

    # --- locks ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, *, shared: bool = False) -> Iterator[None]:
        """The directory's lock: exclusive to compact or adopt, shared to read."""
        fd = os.open(self.directory / _DIR_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _owner_path(self, ident: str) -> Path:
        return self.directory / f"{_OWNER_PREFIX}{ident}{_OWNER_SUFFIX}"

    # --- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Join the directory: compact what dead processes left, then own our files."""
        self.directory.mkdir(parents=True, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self.directory)
        with self.locked():
            self.compact_locked()
            self._adopt_locked(os.getpid())

    def identifier(self) -> str:
        """prometheus_client's process identifier: `<host>-<pid>`, re-made after a fork."""
        pid = os.getpid()
        if pid != self.pid:
            self._after_fork(pid)
        return self.ident

    def _after_fork(self, pid: int) -> None:
        if self._owner_fd is not None:
            # The parent's lock, inherited: closing our copy leaves the parent's lock held.
            with contextlib.suppress(OSError):
                os.close(self._owner_fd)
            self._owner_fd = None
        with self.locked():
            self._adopt_locked(pid)

    def _adopt_locked(self, pid: int) -> None:
        ident = f"{self.host}-{pid}"
        for attempt in range(100):
            candidate = ident if attempt == 0 else f"{ident}-{attempt}"
            fd = os.open(self._owner_path(candidate), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                # A live process of another container with our host name and pid: never
                # share its files.
                os.close(fd)
                continue
            self._owner_fd, self.pid, self.ident = fd, pid, candidate
            return
        raise RuntimeError(f"no free metrics identity for {ident} in {self.directory}")

    # --- compaction ---------------------------------------------------------------------------
    def _alive(self, ident: str, held: list[int]) -> bool:
        path = self._owner_path(ident)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False  # files without an owner: their process is gone
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return True
        held.append(fd)  # keep it until its files are gone
        return False

    def compact_locked(self) -> list[str]:
        """Fold dead processes' files into the archive (call with the exclusive lock held).

        Returns the idents compacted."""
        data = [p for p in glob.glob(str(self.directory / "*.db")) if _ours(_ident_of(p)[1])]
        owners = {
            name[len(_OWNER_PREFIX) : -len(_OWNER_SUFFIX)]
            for name in os.listdir(self.directory)
            if name.startswith(_OWNER_PREFIX) and name.endswith(_OWNER_SUFFIX)
        }
        candidates = (owners | {_ident_of(p)[1] for p in data}) - {self.ident}
        held: list[int] = []
        try:
            dead = {ident for ident in candidates if not self._alive(ident, held)}
            if not dead:
                return []
            by_prefix: dict[str, list[str]] = {}
            for path in data:
                prefix, ident = _ident_of(path)
                if ident in dead:
                    by_prefix.setdefault(prefix, []).append(path)
            for prefix, paths in by_prefix.items():
                if prefix in _SUMMED:
                    self._archive(prefix, paths)
                for path in paths:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(path)
            for ident in dead:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self._owner_path(ident))
            return sorted(dead)
        finally:
            for fd in held:
                os.close(fd)

    def _archive(self, prefix: str, paths: list[str]) -> None:
        archive = self.directory / f"{prefix}_{ARCHIVE}.db"
        sources = [*([str(archive)] if archive.exists() else []), *paths]
        merged = MultiProcessCollector.merge(sources, accumulate=False)
        # Not *.db while it is written: a scrape (which globs *.db) never reads it half done.
        scratch = self.directory / f"{prefix}_{ARCHIVE}.db.new"
        with contextlib.suppress(FileNotFoundError):
            os.remove(scratch)
        out = MmapedDict(str(scratch))
        try:
            for metric in merged:
                for sample in metric.samples:
                    key = mmap_key(
                        metric.name,
                        sample.name,
                        list(sample.labels),
                        list(sample.labels.values()),
                        metric.documentation,
                    )
                    out.write_value(key, sample.value, 0.0)
        finally:
            out.close()
        os.replace(scratch, archive)

    # --- reading ------------------------------------------------------------------------------
    def collector(self) -> LockedMultiProcessCollector:
        return LockedMultiProcessCollector(self)


class LockedMultiProcessCollector:
    """MultiProcessCollector reading under the directory's shared lock."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self):
        self.store.directory.mkdir(parents=True, exist_ok=True)
        with self.store.locked(shared=True):
            files = glob.glob(str(self.store.directory / "*.db"))
            return list(MultiProcessCollector.merge(files, accumulate=True))
