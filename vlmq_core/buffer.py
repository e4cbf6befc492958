"""A FIFO buffer of `Turn`s, kept in memory and on disk as a folder of Parquet shards that loses nothing.

On disk a buffer is a folder of ``shard-<first>-<last>.parquet`` files: every :meth:`TurnBuffer.add` writes its
turns (one finished episode, in collection) as a new shard numbered from a counter that only grows, before it
returns. Small shards are compacted into one (``shard-000010-000073.parquet`` replaces shards 10..73) once
``compact_every`` of them have gathered, and on :meth:`TurnBuffer.flush`, so reading a large dataset stays fast.
Every write goes to a ``*.tmp`` file in the same folder, is fsync'ed, then renamed with `os.replace`; a killed
run leaves whole shards only. A compaction killed after its rename leaves the merged shard and the originals:
opening the folder keeps the merged one and deletes the originals it covers, so nothing is read twice.
Left-over ``*.tmp`` files are ignored. The shards are plain Parquet (``pandas.read_parquet(folder)``,
``datasets.load_dataset("parquet", data_files=...)``).

Usage::

    with TurnBuffer("data/numberline", max_turns=100_000) as buf:
        buf.add(turns)  # on disk when this returns
    batch = buf.sample(32, np.random.default_rng(0))  # [(turn, next_turn or None), ...]
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Self

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlmq_core.turns import Transition, Turn

SCHEMA_VERSION = 2
"""Bump when the on-disk columns change; shards with another version are refused."""
SCHEMA_VERSION_KEY = b"vlmq_schema_version"
"""Parquet key-value metadata key holding the schema version."""

SCHEMA = pa.schema(
    [
        pa.field("episode_id", pa.string(), nullable=False),
        pa.field("t", pa.int64(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=True),
        pa.field("reply", pa.string(), nullable=False),
        pa.field("reward", pa.float64(), nullable=False),
        pa.field("done", pa.bool_(), nullable=False),
        pa.field("truncated", pa.bool_(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("strategy", pa.string(), nullable=False),
        pa.field("valid", pa.bool_(), nullable=False),
        pa.field("obs", pa.string(), nullable=False),
        pa.field("info", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=True),
    ],
    metadata={SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode()},
)
"""One column per `Turn` field, in field order."""

_SHARD_RE = re.compile(r"^shard-(\d+)-(\d+)\.parquet$")


def _fix(path: Path) -> str:
    """What to do about an unreadable shard, knowing how much of the folder it is (after compaction one shard can
    hold a whole dataset)."""
    others = sum(1 for p in path.parent.iterdir() if p != path and _SHARD_RE.match(p.name))
    collect = "`vlmq collect` with the dataset's config (its .config.yaml) collects exactly the seeds missing"
    if not others:
        return (
            "Fix: this shard is the whole dataset: restore it from a copy if there is one; else move it out of the "
            f"folder and {collect}."
        )
    return (
        f"Fix: move or delete this shard (the folder's {others} other shard(s) are intact); then {collect}, and an "
        "online run's buffer continues without it."
    )


class BufferError(RuntimeError):
    """A buffer folder or shard cannot be used; the message says which file, what is wrong, and the fix."""


def _shard_path(folder: Path, first: int, last: int) -> Path:
    return folder / f"shard-{first:06d}-{last:06d}.parquet"


def _turns_to_table(turns: list[Turn]) -> pa.Table:
    """Turn list -> Arrow table with `SCHEMA` (schema version in its metadata)."""
    return pa.Table.from_pylist([dataclasses.asdict(turn) for turn in turns], schema=SCHEMA)


def _table_to_turns(table: pa.Table) -> list[Turn]:
    """Arrow table with the `SCHEMA` columns -> Turn list."""
    return [Turn(**row) for row in table.select(SCHEMA.names).to_pylist()]


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (best effort: not every OS lets you open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_shard(path: Path, turns: list[Turn]) -> None:
    """Atomically write `turns` to `path`: temp file in the same folder, fsync, `os.replace`."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            pq.write_table(_turns_to_table(turns), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _read_shard(path: Path) -> list[Turn]:
    """Read one shard, turning any corruption or version mismatch into a clear `BufferError`."""
    try:
        file = pq.ParquetFile(path)
        kv = file.metadata.metadata or {}
        table = file.read()
    except (pa.ArrowException, OSError) as e:
        raise BufferError(
            f"Buffer shard {path} is truncated or corrupt and cannot be read ({type(e).__name__}: {e}). "
            f"It was probably cut off by a full disk or a copy that did not finish. {_fix(path)}"
        ) from e
    version = kv.get(SCHEMA_VERSION_KEY)
    if version != str(SCHEMA_VERSION).encode():
        found = "no schema version" if version is None else f"schema version {version.decode(errors='replace')}"
        raise BufferError(
            f"Buffer shard {path} has {found}, but this code reads schema version {SCHEMA_VERSION}. "
            f"It was written by another version of vlmq or by another tool. {_fix(path)}"
        )
    missing = [name for name in SCHEMA.names if name not in table.column_names]
    if missing:
        raise BufferError(f"Buffer shard {path} lacks the columns {missing}. {_fix(path)}")
    try:
        return _table_to_turns(table)
    except (TypeError, ValueError) as e:
        raise BufferError(f"Buffer shard {path} has rows that are not valid turns ({e}). {_fix(path)}") from e


class TurnBuffer:
    """Turns in insertion order, in memory and in a folder of Parquet shards, with an optional FIFO cap.

    Opening an existing folder loads every shard. :meth:`add` writes its turns as one new shard before it
    returns; once `compact_every` shards smaller than `shard_size` turns sit at the end, they are merged into
    one (also on :meth:`flush`, or leaving a ``with`` block). After each write, if the shards hold more than
    `max_turns` turns, the oldest are dropped: whole shards are deleted, and the oldest remaining shard is
    rewritten (atomically) without its oldest rows. The cap is also applied when opening a folder.
    """

    def __init__(
        self, path: str | Path, max_turns: int | None = None, shard_size: int = 1024, compact_every: int = 64
    ) -> None:
        if shard_size < 1 or compact_every < 2:
            raise ValueError(f"shard_size must be >= 1 and compact_every >= 2, got {shard_size}, {compact_every}")
        if max_turns is not None and max_turns < 1:
            raise ValueError(f"max_turns must be >= 1 or None, got {max_turns}")
        self.path = Path(path)
        self.max_turns = max_turns
        self.shard_size = shard_size
        self.compact_every = compact_every
        self._turns: list[Turn] = []  # every shard's turns, oldest first
        self._shards: list[tuple[Path, int]] = []  # (file, number of turns), oldest first
        self._next_index = 0
        self._transitions: list[Transition] | None = None
        self._episode_ids: set[str] | None = None
        self.version = 0
        """Counts the changes of the content (each add, each drop of the oldest turns): caches of what the buffer holds
        key on it, since a full FIFO buffer changes while its length does not."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._load()
        self._apply_cap()

    # ---- disk -------------------------------------------------------------------------------------

    def _load(self) -> None:
        """Read all shards in order; shards covered by a merged one (a compaction killed before it deleted them)
        are deleted, ``*.tmp`` files from killed writes are ignored."""
        found = sorted(
            ((int(m.group(1)), int(m.group(2)), p) for p in self.path.iterdir() if (m := _SHARD_RE.match(p.name))),
            key=lambda x: (x[0], -x[1]),
        )
        end = -1
        for first, last, shard in found:
            if last <= end:  # inside a merged shard already read
                shard.unlink()
                continue
            if first <= end:
                raise BufferError(
                    f"Buffer shard {shard} overlaps another shard's range (up to {end}); it was not written by "
                    f"this buffer. {_fix(shard)}"
                )
            turns = _read_shard(shard)
            self._shards.append((shard, len(turns)))
            self._turns.extend(turns)
            end = last
        self._next_index = end + 1

    def _apply_cap(self) -> None:
        """Drop the oldest turns beyond `max_turns`, on disk and in memory."""
        if self.max_turns is None:
            return
        excess = len(self._turns) - self.max_turns
        if excess <= 0:
            return
        dropped = 0
        while self._shards and self._shards[0][1] <= excess - dropped:
            shard, n = self._shards.pop(0)
            shard.unlink()
            dropped += n
        rest = excess - dropped
        if rest > 0:  # the oldest remaining shard is partially over the cap
            shard, n = self._shards[0]
            _write_shard(shard, self._turns[excess : dropped + n])
            self._shards[0] = (shard, n - rest)
        _fsync_dir(self.path)
        del self._turns[:excess]
        self._transitions = self._episode_ids = None
        self.version += 1

    def _compact(self, min_shards: int) -> None:
        """Merge the trailing shards smaller than `shard_size` into one, when there are at least `min_shards`."""
        tail = 0
        while tail < len(self._shards) and self._shards[-1 - tail][1] < self.shard_size:
            tail += 1
        if tail < max(2, min_shards):
            return
        merged = self._shards[-tail:]
        n = sum(count for _, count in merged)
        first = int(_SHARD_RE.match(merged[0][0].name).group(1))
        last = int(_SHARD_RE.match(merged[-1][0].name).group(2))
        target = _shard_path(self.path, first, last)
        _write_shard(target, self._turns[len(self._turns) - n :])  # the merged shard first: a kill loses nothing
        for shard, _ in merged:
            shard.unlink()
        _fsync_dir(self.path)
        self._shards[-tail:] = [(target, n)]

    def add(self, turns: Iterable[Turn]) -> None:
        """Append turns and write them to disk as one shard before returning (then compact and cap)."""
        turns = list(turns)
        for turn in turns:
            if not isinstance(turn, Turn):
                raise TypeError(f"TurnBuffer.add expects Turn objects, got {type(turn).__name__}")
        if not turns:
            return
        shard = _shard_path(self.path, self._next_index, self._next_index)
        _write_shard(shard, turns)
        self._next_index += 1
        self._shards.append((shard, len(turns)))
        self._turns.extend(turns)
        self._transitions = None
        self.version += 1
        if self._episode_ids is not None:  # kept up to date: an online run asks after every finished episode
            self._episode_ids.update(turn.episode_id for turn in turns)
        self._compact(self.compact_every)
        self._apply_cap()

    def flush(self) -> None:
        """Compact the trailing small shards into one (every turn is already on disk)."""
        self._compact(2)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()

    # ---- views ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._turns)

    @property
    def turns(self) -> list[Turn]:
        """All turns in insertion order; a copy."""
        return list(self._turns)

    def has_episode(self, episode_id: str) -> bool:
        """Whether any turn of episode `episode_id` is held (a resumed online run skips episodes already stored)."""
        if self._episode_ids is None:
            self._episode_ids = {turn.episode_id for turn in self._turns}
        return episode_id in self._episode_ids

    def episodes(self) -> dict[str, list[Turn]]:
        """Episode id -> its turns sorted by `t` (episodes in order of first appearance)."""
        out: dict[str, list[Turn]] = {}
        for turn in self._turns:
            out.setdefault(turn.episode_id, []).append(turn)
        return {eid: sorted(turns, key=lambda turn: turn.t) for eid, turns in out.items()}

    def complete_episodes(self) -> list[list[Turn]]:
        """Episodes held whole (turns 0..T present, turn T done), in order of first appearance."""
        return [
            turns
            for turns in self.episodes().values()
            if turns[-1].done and [turn.t for turn in turns] == list(range(len(turns)))
        ]

    def transitions(self) -> list[Transition]:
        """(turn, next turn of the same episode) pairs, in insertion order; cached until the next change.

        A `done` turn pairs with None. A turn that is not done and whose turn t+1 is missing (the episode
        was cut by the FIFO cap or by a killed collection) is left out: it cannot be bootstrapped.
        """
        if self._transitions is None:
            by_key = {(turn.episode_id, turn.t): turn for turn in self._turns}
            pairs: list[Transition] = []
            for turn in self._turns:
                if turn.done:
                    pairs.append((turn, None))
                elif (nxt := by_key.get((turn.episode_id, turn.t + 1))) is not None:
                    pairs.append((turn, nxt))
            self._transitions = pairs
        return self._transitions

    def sample(self, n: int, rng: np.random.Generator) -> list[Transition]:
        """Draw `n` transitions uniformly with replacement."""
        pairs = self.transitions()
        if not pairs:
            raise BufferError(
                f"Buffer {self.path} has no usable transitions to sample ({len(self)} turns). "
                "Fix: collect episodes first (add turns, including each episode's final `done` turn)."
            )
        return [pairs[i] for i in rng.integers(0, len(pairs), size=n)]

    def min_return_to_go(self) -> float:
        """The lowest undiscounted return-to-go ``sum_{k >= t} r_k`` over every turn t of every episode held
        (episodes cut by the cap count from their first held turn). A pessimistic initial Q for the critic
        (``CriticConfig.init_q``). Raises BufferError when the buffer is empty."""
        if not self._turns:
            raise BufferError(f"Buffer {self.path} is empty: no return-to-go. Fix: collect episodes first.")
        lowest = math.inf
        for turns in self.episodes().values():
            to_go = 0.0
            for turn in reversed(turns):
                to_go += turn.reward
                lowest = min(lowest, to_go)
        return float(lowest)

    def stats(self) -> dict:
        """Summary for logging. Complete episodes (turns 0..T present, turn T done) give the return and
        success figures; these are NaN when there is no complete episode (and `valid_frac` when empty)."""
        complete = self.complete_episodes()
        nan = float("nan")
        return {
            "buffer/turns": len(self),
            "buffer/episodes": len({turn.episode_id for turn in self._turns}),
            "buffer/valid_frac": float(np.mean([turn.valid for turn in self._turns])) if self._turns else nan,
            "buffer/mean_return": (
                float(np.mean([sum(turn.reward for turn in ep) for ep in complete])) if complete else nan
            ),
            "buffer/success_frac": (float(np.mean([ep[-1].reward > 0 for ep in complete])) if complete else nan),
            "buffer/by_source": dict(Counter(turn.source for turn in self._turns)),
            "buffer/by_strategy": dict(Counter(turn.strategy for turn in self._turns)),
        }

    def __repr__(self) -> str:
        shards, cap = len(self._shards), self.max_turns
        return f"TurnBuffer({str(self.path)!r}, turns={len(self)}, shards={shards}, max_turns={cap})"
