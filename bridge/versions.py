"""Saving files in ``mappings/``: validate, write atomically, record a version, reload.

The files stay the source of truth (reviewed in git); each save through the API or the
admin page also records the full text, its author and the diff in ``mapping_versions``, so
any earlier state can be restored. A file changed on disk outside the bridge (a deploy, a
``git pull``) is recorded as a ``baseline`` version before the next save, so history never
has a gap. Reviews keep the mapping snapshot they were rendered with: nothing here touches
a review already open. Every instance follows the saves made on the others (``catch_up``).
"""

from __future__ import annotations

import difflib
import hashlib
import io
import logging
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from . import audit
from .errors import ConflictError, MappingError, NotFoundError
from .mapping import Mapping, parse_mapping, yaml_line
from .models import MappingVersion
from .routing import Route, Router, parse_routes
from .runtime import Runtime

log = logging.getLogger("bridge.mappings")
ROUTES = "routes"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_write_lock = threading.Lock()


def etag(text: str) -> str:
    """The ETag of a file's text (what ``If-Match`` must carry)."""
    return '"' + hashlib.sha256(text.encode()).hexdigest()[:16] + '"'


def path_for(rt: Runtime, name: str) -> Path:
    if not _NAME.match(name) or name.startswith("."):
        raise NotFoundError(f"no mapping named {name!r}")
    return rt.settings.mappings_dir / f"{name}.yaml"


def read(rt: Runtime, name: str) -> str:
    path = path_for(rt, name)
    if not path.exists():
        raise NotFoundError(f"no mapping named {name!r}")
    return path.read_text()


def names(rt: Runtime) -> list[str]:
    """Every mapping file's name, then ``routes``."""
    found = sorted(p.stem for p in rt.settings.mappings_dir.glob("*.yaml") if p.stem != ROUTES)
    return found + ([ROUTES] if (rt.settings.mappings_dir / "routes.yaml").exists() else [])


def unified_diff(old: str | None, new: str, name: str, *, old_label: str = "saved", new_label: str = "new") -> str:
    return "".join(
        difflib.unified_diff(
            (old or "").splitlines(keepends=True), new.splitlines(keepends=True),
            fromfile=f"{name}.yaml ({old_label})", tofile=f"{name}.yaml ({new_label})",
        )
    )


# ----- validation -------------------------------------------------------------------


@dataclass(frozen=True)
class Checked:
    """A file that passed every check: parsed, and consistent with the rest of the bridge."""

    name: str
    mapping: Mapping | None = None
    routes: list[Route] | None = None

    @property
    def mapping_version(self) -> str | None:
        return self.mapping.version if self.mapping else None


def validate(rt: Runtime, name: str, text: str) -> Checked:
    """Everything a save checks, without saving. Raises MappingError whose details each
    name file, line, field and reason."""
    file = f"{name}.yaml"
    if name == ROUTES:
        routes = parse_routes(text, file=file)
        for index, route in enumerate(routes):
            if route.mapping not in rt.mappings:
                raise MappingError(
                    f"{file}: route {route.name!r} names mapping {route.mapping!r}, which does not exist",
                    details=[{"file": file, "line": yaml_line(text, ("routes", index, "mapping")),
                              "field": f"routes.{index}.mapping", "reason": f"unknown mapping; known: {sorted(rt.mappings)}"}],
                )
        Router(routes)
        return Checked(name=name, routes=routes)
    mapping = parse_mapping(text, file=file)
    if mapping.name != name:
        raise MappingError(
            f"{file}: name must be {name!r}, the file's name",
            details=[{"file": file, "line": yaml_line(text, ("name",)), "field": "name", "reason": f"must be {name!r}"}],
        )
    if mapping.connection not in rt.settings.connections:
        raise MappingError(
            f"{file}: connection {mapping.connection!r} is not configured",
            details=[{"file": file, "line": yaml_line(text, ("connection",)), "field": "connection",
                      "reason": f"unknown connection; configured: {sorted(rt.settings.connections)}"}],
        )
    return Checked(name=name, mapping=mapping)


# ----- saving -----------------------------------------------------------------------


@dataclass(frozen=True)
class Saved:
    name: str
    number: int
    etag: str
    mapping_version: str | None
    diff: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "number": self.number, "etag": self.etag, "version": self.mapping_version, "diff": self.diff}


def save(
    rt: Runtime,
    name: str,
    text: str,
    *,
    author: str,
    if_match: str | None,
    action: str = "save",
    restored_from: int | None = None,
) -> Saved:
    """Validate ``text``, write it atomically, record a version and reload the runtime.

    ``if_match`` must be the ETag the caller read (required once the file exists): a file
    changed since is a 409 and nothing is written. A version row is inserted before the
    file is replaced, so two instances saving at once collide on (name, number) and one
    gets a 409 instead of silently overwriting the other.
    """
    path = path_for(rt, name)
    with _write_lock:
        current = path.read_text() if path.exists() else None
        _check_etag(current, if_match)
        checked = validate(rt, name, text)
        try:
            with rt.db.transaction() as session:
                latest = session.execute(
                    select(MappingVersion).where(MappingVersion.name == name).order_by(MappingVersion.number.desc()).limit(1)
                ).scalar_one_or_none()
                number = latest.number if latest else 0
                if current is not None and (latest is None or latest.etag != etag(current)):
                    number += 1  # the file as found on disk (first save, or changed outside the bridge)
                    session.add(_row(name, number, current, author="disk", action="baseline",
                                     previous=latest.text if latest else None, mapping_version=_version_of(name, current)))
                number += 1
                diff = unified_diff(current, text, name, old_label=f"v{number - 1}" if number > 1 else "none", new_label=f"v{number}")
                session.add(_row(name, number, text, author=author, action=action, previous=current,
                                 mapping_version=checked.mapping_version, restored_from=restored_from, diff=diff))
                session.flush()  # the unique (name, number) serialises concurrent saves
                _write_atomically(path, text)
                try:
                    rt.reload()
                except Exception:
                    _restore_file(path, current)
                    rt.reload()
                    raise
                audit.record(session, f"mapping.{'restored' if action == 'restore' else 'changed'}", actor=author,
                             name=name, number=number, version=checked.mapping_version, restored_from=restored_from)
        except IntegrityError:
            raise ConflictError(
                "someone saved this file at the same moment; reload and apply your change again", code="stale_etag"
            ) from None
        rt.mapping_numbers[name] = number  # this instance is up to date with its own save: ``catch_up`` skips it
    return Saved(name=name, number=number, etag=etag(text), mapping_version=checked.mapping_version, diff=diff)


def patch(rt: Runtime, name: str, changes: dict[str, Any], *, author: str, if_match: str | None) -> Saved:
    """Apply a JSON merge patch (RFC 7396: objects merge, ``null`` deletes) to the file's
    YAML with ruamel's round-trip mode, so comments, key order and quoting survive."""
    from ruamel.yaml import YAML

    current = read(rt, name)
    _check_etag(current, if_match)
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    document = yaml.load(current)
    if not isinstance(document, dict) or not isinstance(changes, dict):
        raise MappingError(f"{name}.yaml: a merge patch applies to a YAML mapping with a JSON object")
    _merge(document, changes)
    out = io.StringIO()
    yaml.dump(document, out)
    return save(rt, name, out.getvalue(), author=author, if_match=if_match, action="patch")


def restore(rt: Runtime, name: str, number: int, *, author: str, if_match: str | None) -> Saved:
    """Make version ``number``'s text current again, as a new version (history only grows)."""
    old = get_version(rt, name, number)
    return save(rt, name, old["text"], author=author, if_match=if_match, action="restore", restored_from=number)


# ----- history ----------------------------------------------------------------------


def history(rt: Runtime, name: str, *, limit: int = 100) -> list[dict[str, Any]]:
    path_for(rt, name)
    with rt.db.read() as session:
        rows = session.execute(
            select(MappingVersion).where(MappingVersion.name == name).order_by(MappingVersion.number.desc()).limit(limit)
        ).scalars()
        return [_summary(row) for row in rows]


def get_version(rt: Runtime, name: str, number: int) -> dict[str, Any]:
    path_for(rt, name)
    with rt.db.read() as session:
        row = session.execute(
            select(MappingVersion).where(MappingVersion.name == name, MappingVersion.number == number)
        ).scalar_one_or_none()
        if row is None:
            raise NotFoundError(f"{name} has no version {number}")
        return {**_summary(row), "text": row.text, "diff": row.diff}


def version_count(rt: Runtime, name: str) -> int:
    with rt.db.read() as session:
        return session.execute(select(func.count()).where(MappingVersion.name == name)).scalar_one()


# ----- other instances' saves --------------------------------------------------------


def catch_up(rt: Runtime) -> list[str]:
    """Bring this instance's files up to the versions saved on any instance since it last
    looked, then reload: instances sharing a database but each with its own ``mappings/``
    (one per host) all route and render with what an admin saved on one of them.

    A file that is an earlier saved version (or missing: a mapping created elsewhere) is
    replaced by the latest. A file no version has (a deploy, a hand edit on this host) is
    newer than the history: it stays, as it would for a save here, which records it as a
    baseline first. The names brought up to date."""
    with rt.db.read() as session:
        latest = dict(session.execute(
            select(MappingVersion.name, func.max(MappingVersion.number)).group_by(MappingVersion.name)).all())
    new = {name: number for name, number in latest.items() if rt.mapping_numbers.get(name) != number}
    if not new:
        return []
    written: list[tuple[Path, str | None]] = []
    with _write_lock, rt.db.read() as session:
        for name, number in new.items():
            path = path_for(rt, name)
            versions = session.execute(select(MappingVersion.number, MappingVersion.etag)
                                       .where(MappingVersion.name == name)).all()
            current = path.read_text() if path.exists() else None
            known = current is None or etag(current) in {v.etag for v in versions}
            newest = next(v for v in versions if v.number == number)
            if known and (current is None or etag(current) != newest.etag):
                text = session.execute(select(MappingVersion.text).where(
                    MappingVersion.name == name, MappingVersion.number == number)).scalar_one()
                _write_atomically(path, text)
                written.append((path, current))
            elif not known:
                log.warning("mapping.kept_local", extra={"mapping": name, "saved_version": number})
        try:
            rt.reload()
        except Exception:  # a version this host cannot load (a connection it lacks): keep what it had
            log.exception("mapping.follow_failed", extra={"mappings": sorted(new)})
            for path, text in written:
                _restore_file(path, text)
            rt.reload()
            written = []
        rt.mapping_numbers.update(new)  # looked at: not tried again until the next save
    return [path.stem for path, _ in written]


class Follower:
    """``catch_up`` at start and every ``every_seconds`` in a thread of its own."""

    def __init__(self, rt: Runtime, every_seconds: float):
        self.rt, self.every = rt, every_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mapping-follower", daemon=True)

    def start(self) -> "Follower":
        if self.every > 0:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            try:
                catch_up(self.rt)
            except Exception:  # e.g. the database restarting: the next round tries again
                log.exception("mapping.follow_failed")
            if self._stop.wait(self.every):
                return


# ----- helpers ----------------------------------------------------------------------


def _check_etag(current: str | None, if_match: str | None) -> None:
    if current is None:
        return
    if if_match is None:
        raise ConflictError("send If-Match with the ETag you read, so no one else's change is lost", code="if_match_required")
    if if_match.strip() not in (etag(current), "W/" + etag(current)):
        raise ConflictError(
            "the mapping changed since you read it; reload and apply your change again",
            code="stale_etag",
            details={"current_etag": etag(current)},
        )


def _version_of(name: str, text: str) -> str | None:
    if name == ROUTES:
        return None
    try:
        return parse_mapping(text, file=f"{name}.yaml").version
    except MappingError:
        return None


def _row(name: str, number: int, text: str, *, author: str, action: str, previous: str | None,
         mapping_version: str | None, restored_from: int | None = None, diff: str | None = None) -> MappingVersion:
    return MappingVersion(
        name=name, number=number, author=author, action=action, restored_from=restored_from, etag=etag(text),
        mapping_version=mapping_version, text=text,
        diff=diff if diff is not None else unified_diff(previous, text, name, old_label="before", new_label=f"v{number}"),
    )


def _summary(row: MappingVersion) -> dict[str, Any]:
    return {
        "number": row.number, "created_at": row.created_at.isoformat(), "author": row.author, "action": row.action,
        "restored_from": row.restored_from, "etag": row.etag, "version": row.mapping_version,
    }


def _write_atomically(path: Path, text: str) -> None:
    """Write beside the file, fsync, then rename over it: readers see the old or the new
    file, never half of one. The file's permissions are kept."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # some filesystems cannot fsync a directory; the rename is still atomic
        pass


def _restore_file(path: Path, text: str | None) -> None:
    if text is None:
        path.unlink(missing_ok=True)
    else:
        _write_atomically(path, text)


def _merge(target: Any, changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value
