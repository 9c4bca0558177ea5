"""Append-only match progress: resume after any crash, refuse a run it does not belong to.

``OUT/checkpoint.jsonl`` is JSON lines:

    {"type": "header", ...}            what the matches depend on (hash, bundle, video, options, seed)
    {"type": "frames", "frames": [...]} one line per save: the choices of the frames since the last one
    {"type": "end", ...}               matching finished: frame count, output fps, how the video ended

A save appends one line and fsyncs it, so it costs O(frames saved), never O(frames so
far). A kill mid-save leaves at most a partial last line, which the next run drops.
A run whose match options, bundle or video differ is refused (or, with ``restart``,
starts a fresh file); a run whose output options alone differ reuses every match.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from fluxframe_render.pipeline import Stage
from fluxframe_render.select import Choice
from fluxframe_render.video import VideoInfo
from shared.atomic import atomic_write_bytes, fsync_dir
from shared.errors import OutputError, StateError
from shared.hashing import canonical_json, sha256_json

CHECKPOINT_NAME = "checkpoint.jsonl"
# Match options derived by ff-render, not chosen by the user: never shown to them.
INTERNAL_KEYS = ("k", "match_batch")
FRAME_INPUT_KEY = "frame_input"  # match options' version of how frames are read (match.FRAME_INPUT_VERSION)
CHECKPOINT_VERSION = 1
# Bytes hashed at each end of the video to recognise it cheaply (whole-file hashing of a
# multi-GB video would cost more than a short render).
IDENTITY_SAMPLE = 1 << 20


def video_identity(path: Path, info: VideoInfo) -> dict[str, Any]:
    """What identifies the video's content: size, a hash of its ends, and its stream geometry.

    The folder it lives in is left out, so moving the video does not void a checkpoint.
    """
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as handle:
        digest.update(handle.read(IDENTITY_SAMPLE))
        if size > IDENTITY_SAMPLE:
            handle.seek(max(IDENTITY_SAMPLE, size - IDENTITY_SAMPLE))
            digest.update(handle.read(IDENTITY_SAMPLE))
    return {
        "name": path.name,
        "bytes": size,
        "ends_sha256": digest.hexdigest(),
        "width": info.width,
        "height": info.height,
        "fps": info.fps,
        "frame_count": info.frame_count,
    }


@dataclass(frozen=True)
class Header:
    bundle_id: str
    video: dict[str, Any]
    match_options: dict[str, Any]
    seed: int | None  # the seed in effect (drawn once when none was given, then kept); None: no draws

    @property
    def match_hash(self) -> str:
        return sha256_json({"bundle_id": self.bundle_id, "video": self.video, "match_options": self.match_options})

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "header",
            "version": CHECKPOINT_VERSION,
            "match_hash": self.match_hash,
            "bundle_id": self.bundle_id,
            "video": self.video,
            "match_options": self.match_options,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Header:
        return cls(
            bundle_id=str(data["bundle_id"]),
            video=dict(data["video"]),
            match_options=dict(data["match_options"]),
            seed=None if data["seed"] is None else int(data["seed"]),
        )


@dataclass
class Progress:
    """What a checkpoint holds: the header in effect, the choices so far, the end record if finished."""

    header: Header
    choices: list[Choice]
    end: dict[str, Any] | None

    @property
    def complete(self) -> bool:
        return self.end is not None


class CheckpointMismatch(StateError):
    """The checkpoint belongs to a run with other match options, another bundle or another video."""


def _differences(old: Header, new: Header) -> str:
    changes = []
    if old.bundle_id != new.bundle_id:
        changes.append(f"bundle {old.bundle_id[:12]} -> {new.bundle_id[:12]}")
    if old.video != new.video:
        changes.append(f"video {old.video.get('name')} -> {new.video.get('name')} (different content)")
    for key in sorted(set(old.match_options) | set(new.match_options)):
        if key in INTERNAL_KEYS:
            continue  # derived from what the user chose: naming them would only confuse
        before, after = old.match_options.get(key), new.match_options.get(key)
        if before == after:
            continue
        if key == FRAME_INPUT_KEY:
            # Not an option: the matches were made by a FluxFrame that read frames another way.
            changes.append(f"frames read for matching by another FluxFrame version ({json.dumps(before)} -> {after})")
        else:
            changes.append(f"{key} {json.dumps(before)} -> {json.dumps(after)}")
    return ", ".join(changes) or "checkpoint header differs"


def _damaged(path: Path, line: int, why: str) -> StateError:
    return StateError(f"{path} is damaged at line {line} ({why}); rerun with --restart to discard it")


def _read(path: Path) -> tuple[Header, list[Choice], dict[str, Any] | None, int]:
    """Parse a checkpoint; returns (header, choices, end, byte length of its complete lines)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror or exc}") from None
    lines = data.split(b"\n")
    # Everything after the last newline is a line cut short by a crash: not part of the checkpoint.
    complete, good_bytes = lines[:-1], len(data) - len(lines[-1])
    if not complete:
        raise _damaged(path, 1, "no complete header line")
    records: list[dict[str, Any]] = []
    for number, raw in enumerate(complete, start=1):
        try:
            record = json.loads(raw)
        except ValueError:
            if number == len(complete):
                # A torn final line (the newline made it to disk, the text did not): drop it too.
                good_bytes -= len(raw) + 1
                break
            raise _damaged(path, number, "not JSON") from None
        if not isinstance(record, dict):
            raise _damaged(path, number, "not a JSON object")
        records.append(record)
    if not records or records[0].get("type") != "header":
        raise _damaged(path, 1, "no header")
    if records[0].get("version") != CHECKPOINT_VERSION:
        raise StateError(
            f"{path} has checkpoint version {records[0].get('version')!r}, this ff-render writes "
            f"{CHECKPOINT_VERSION}; rerun with --restart to discard it"
        )
    try:
        header = Header.from_dict(records[0])
    except (KeyError, TypeError, ValueError) as exc:
        raise _damaged(path, 1, f"bad header: {exc}") from None
    choices: list[Choice] = []
    end: dict[str, Any] | None = None
    for number, record in enumerate(records[1:], start=2):
        kind = record.get("type")
        if end is not None:
            raise _damaged(path, number, "a record after the end record")
        if kind == "end":
            end = record
            continue
        if kind != "frames" or not isinstance(record.get("frames"), list):
            raise _damaged(path, number, f"unknown record type {kind!r}")
        for item in record["frames"]:
            try:
                choice = Choice.from_dict(item)
            except (KeyError, TypeError, ValueError) as exc:
                raise _damaged(path, number, f"bad frame record: {exc}") from None
            if choice.index < len(choices) and choices[choice.index] == choice:
                continue  # the same choice saved twice (a save interrupted after its write): harmless
            if choice.index != len(choices):
                raise _damaged(path, number, f"frame {choice.index} where {len(choices)} was expected")
            choices.append(choice)
    return header, choices, end, good_bytes


class Checkpoint:
    """An open checkpoint file, appended to as frames are chosen."""

    def __init__(self, path: Path, handle: IO[bytes]) -> None:
        self.path = path
        self._handle = handle

    @classmethod
    def open(cls, path: Path, header: Header, *, restart: bool = False) -> tuple[Checkpoint, Progress]:
        """Open ``path`` for ``header``'s run: resume it, or start it fresh (new file or ``restart``).

        Raises StateError when the file belongs to a different run and ``restart`` is off.
        """
        if path.exists() and not restart:
            old, choices, end, good_bytes = _read(path)
            if old.match_hash != header.match_hash:
                raise CheckpointMismatch(
                    f"{path} holds matches made with other settings ({_differences(old, header)}); "
                    "rerun with --restart to discard them, or choose another output folder"
                )
            handle: IO[bytes]
            try:
                handle = open(path, "r+b")  # noqa: SIM115 - kept open for appends until close()
                handle.truncate(good_bytes)
                handle.seek(good_bytes)
            except OSError as exc:
                raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
            return cls(path, handle), Progress(old, choices, end)
        line = canonical_json(header.to_dict()) + "\n"
        atomic_write_bytes(path, line.encode())
        try:
            handle = open(path, "ab")  # noqa: SIM115 - kept open for appends until close()
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
        return cls(path, handle), Progress(header, [], None)

    def _append(self, record: dict[str, Any]) -> None:
        line = canonical_json(record) + "\n"
        try:
            self._handle.write(line.encode())
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def save(self, choices: Sequence[Choice]) -> None:
        """Append the choices made since the last save (one line, one fsync)."""
        if choices:
            self._append({"type": "frames", "frames": [c.to_dict() for c in choices]})

    def finish(self, end: dict[str, Any]) -> None:
        """Mark matching complete; later runs go straight to output."""
        self._append({**end, "type": "end"})
        fsync_dir(self.path.parent)

    def close(self) -> None:
        self._handle.close()


class Commit(Stage[Choice, Choice]):
    """The match phase's last stage: appends choices to the checkpoint every ``every`` frames.

    With ``units`` (a policy that decides several frames together: a scene smoothed, a
    window assigned) only whole units are saved, the last choice of each carrying its
    ``scene_end``, so a resumed run starts where a unit starts. ``close`` saves what is
    complete however the run ends (error, Ctrl-C).
    """

    name = "checkpoint"

    def __init__(
        self,
        checkpoint: Checkpoint,
        every: int,
        *,
        units: bool = False,
        on_commit: Callable[[list[Choice]], None] | None = None,
        before_save: Callable[[list[Choice]], None] | None = None,
    ) -> None:
        self.checkpoint = checkpoint
        self.every = every
        self.units = units
        self.on_commit = on_commit
        # Writes what belongs to the choices elsewhere (tile grids) before they are committed.
        self.before_save = before_save
        self.pending: list[Choice] = []
        self.choices: list[Choice] = []

    def process(self, item: Choice) -> Iterable[Choice]:
        self.pending.append(item)
        self.choices.append(item)
        # A unit is saved as soon as it is complete; single frames every ``every``.
        if (item.scene_end is not None) if self.units else len(self.pending) >= self.every:
            self._save(len(self.pending))
        return (item,)

    def _save(self, count: int) -> None:
        # Taken out first: a Ctrl-C inside save() must not make close() save them twice.
        saving, self.pending = self.pending[:count], self.pending[count:]
        if saving and self.before_save is not None:
            self.before_save(saving)
        self.checkpoint.save(saving)
        if self.on_commit is not None and saving:
            self.on_commit(saving)  # in the checkpoint now: progress, and the output phase may show them

    def close(self) -> None:
        count = len(self.pending)
        if self.units:
            ends = [i for i, c in enumerate(self.pending) if c.scene_end is not None]
            count = ends[-1] + 1 if ends else 0
        self._save(count)


ARCHIVE_DIR = ".matches"  # inside OUT: the matches of other option sets, kept for when a user returns to them


def read_header(path: Path) -> Header | None:
    """The header of the checkpoint at ``path``; None when there is none or it cannot be read."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline()
        record = json.loads(first)
        if record.get("type") != "header" or record.get("version") != CHECKPOINT_VERSION:
            return None
        return Header.from_dict(record)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def frames_in(path: Path) -> int:
    """How many chosen frames the checkpoint at ``path`` holds (0 when unreadable)."""
    try:
        return len(_read(path)[1])
    except StateError:
        return 0


def switch_matches(out: Path, header: Header, companions: tuple[str, ...] = ()) -> str | None:
    """Make OUT's checkpoint the one for ``header``'s options, keeping the matches it replaces.

    The current checkpoint (and its ``companions``, files of OUT that belong to the same
    matches, e.g. tile grids), if made with other options, moves to OUT/.matches/ under its
    match hash; those kept there earlier for ``header``'s options come back. All are renames
    in one folder tree: nothing is copied, nothing is lost. Returns the one line to tell the
    user, or None when nothing changed.
    """
    current = out / CHECKPOINT_NAME
    old = read_header(current) if current.exists() else None
    if old is not None and old.match_hash == header.match_hash:
        return None
    archive = out / ARCHIVE_DIR
    names = (CHECKPOINT_NAME, *companions)

    def kept(match_hash: str, name: str) -> Path:
        stem = match_hash[:32]
        return archive / (f"{stem}.jsonl" if name == CHECKPOINT_NAME else f"{stem}.{name}")

    message = None
    try:
        if old is not None:
            archive.mkdir(exist_ok=True)
            frames = frames_in(current)
            for name in names:
                if (out / name).exists():
                    os.replace(out / name, kept(old.match_hash, name))
            message = (
                f"match options changed ({_differences(old, header)}): matching again; the {frames} frames "
                f"matched before are kept in {archive} and come back if you return to those options"
            )
        elif not current.exists():
            # No checkpoint: companions left without one belong to no matches.
            for name in companions:
                (out / name).unlink(missing_ok=True)
        if kept(header.match_hash, CHECKPOINT_NAME).exists():
            for name in names:
                if kept(header.match_hash, name).exists():
                    os.replace(kept(header.match_hash, name), out / name)
            frames = frames_in(current)
            message = (message + "; " if message else "") + f"resuming the {frames} frames kept for these options"
        fsync_dir(out)
    except OSError as exc:
        raise OutputError(f"cannot switch checkpoints in {out}: {exc.strerror or exc}") from None
    return message
