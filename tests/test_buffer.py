"""Tests for vlmq_core.buffer: Parquet round trip, a shard per add, compaction (and a killed one), FIFO cap,
transitions, sampling, corruption, and the shards as plain Parquet for pandas and datasets."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlmq_core import buffer as buffer_mod
from vlmq_core.buffer import (
    SCHEMA,
    SCHEMA_VERSION,
    SCHEMA_VERSION_KEY,
    BufferError,
    TurnBuffer,
)
from vlmq_core.turns import Turn, png_bytes


def tiny_png(color: tuple[int, int, int] = (255, 0, 0)) -> bytes:
    return png_bytes(Image.new("RGB", (4, 3), color))


def make_turn(episode: str = "e0", t: int = 0, done: bool = False, reward: float = 0.0, **kw) -> Turn:
    fields = {"task": "vlmq/Test-v0", "prompt": f"p {episode} {t}", "image": None, "reply": f"a {t}"}
    fields.update(kw)
    return Turn(episode_id=episode, t=t, done=done, reward=reward, **fields)


def make_episode(episode: str, length: int, reward: float = 1.0, **kw) -> list[Turn]:
    """`length` turns, the last one done with reward `reward` (earlier ones reward 0)."""
    return [
        make_turn(episode, t, done=t == length - 1, reward=reward if t == length - 1 else 0.0, **kw)
        for t in range(length)
    ]


def numbered(n: int) -> list[Turn]:
    """`n` one-turn episodes named by insertion position, so FIFO order is easy to check."""
    return [make_turn(f"ep{i:03d}", 0, done=True, reward=float(i)) for i in range(n)]


def shard_files(path: Path) -> list[Path]:
    return sorted(path.glob("shard-*.parquet"))


def names(path: Path) -> list[str]:
    return [p.name for p in shard_files(path)]


def add_in_chunks(buf: TurnBuffer, turns: list[Turn], chunk: int) -> None:
    for i in range(0, len(turns), chunk):
        buf.add(turns[i : i + chunk])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- round trip and schema ------------------------------------------------------------------------


def test_schema_has_one_column_per_turn_field():
    assert SCHEMA.names == [f.name for f in dataclasses.fields(Turn)]
    assert SCHEMA.field("image").type == pa.binary() and SCHEMA.field("image").nullable


def test_round_trip_every_field(tmp_path):
    full = Turn(
        episode_id="ep-ü",
        t=3,
        task="vlmq/NumberLine-v0",
        prompt="move to 5\nnow",
        image=tiny_png((1, 2, 3)),
        reply="[action] right",
        reward=-0.25,
        done=True,
        truncated=True,
        source="qwen2-vl",
        strategy="min_format",
        valid=False,
        obs="x=4",
        info='{"x": 4}',
    )
    text_only = make_turn("ep-2", 0, image=None)
    with TurnBuffer(tmp_path) as buf:
        buf.add([full, text_only])
    back = TurnBuffer(tmp_path).turns
    assert back == [full, text_only]
    assert back[0].image == full.image and back[1].image is None
    assert back[0].pil_image().getpixel((0, 0)) == (1, 2, 3)


def test_schema_version_in_parquet_metadata(tmp_path):
    with TurnBuffer(tmp_path) as buf:
        buf.add(numbered(2))
    (shard,) = shard_files(tmp_path)
    assert pq.read_metadata(shard).metadata[SCHEMA_VERSION_KEY] == str(SCHEMA_VERSION).encode()


# ---- a shard per add, compaction, reopen ----------------------------------------------------------------


def test_add_is_on_disk_when_it_returns(tmp_path):
    buf = TurnBuffer(tmp_path)
    buf.add(make_episode("a", 3))
    assert names(tmp_path) == ["shard-000000-000000.parquet"]
    assert TurnBuffer(tmp_path).turns == buf.turns  # another process sees it at once, no flush needed
    buf.add(make_episode("b", 2))
    buf.add([])  # nothing to write: no empty shard
    assert names(tmp_path) == ["shard-000000-000000.parquet", "shard-000001-000001.parquet"]
    assert [pq.read_metadata(p).num_rows for p in shard_files(tmp_path)] == [3, 2]


def test_small_shards_are_compacted_into_one(tmp_path):
    turns = numbered(10)
    buf = TurnBuffer(tmp_path, shard_size=4, compact_every=3)
    add_in_chunks(buf, turns[:3], 1)  # three one-turn shards: merged
    assert names(tmp_path) == ["shard-000000-000002.parquet"]
    buf.add(turns[3:4])  # the merged shard (3 turns) is still small: the next compaction takes it along
    buf.add(turns[4:5])
    assert names(tmp_path) == ["shard-000000-000004.parquet"]  # 5 turns >= shard_size: it stays from now on
    add_in_chunks(buf, turns[5:9], 2)  # two small shards: fewer than compact_every
    assert names(tmp_path) == [f"shard-{a:06d}-{b:06d}.parquet" for a, b in ((0, 4), (5, 5), (6, 6))]
    buf.flush()  # compacts the small tail
    assert names(tmp_path) == ["shard-000000-000004.parquet", "shard-000005-000006.parquet"]
    buf.add(turns[9:])
    assert names(tmp_path)[-1] == "shard-000007-000007.parquet"  # the counter only grows
    assert TurnBuffer(tmp_path).turns == turns


def test_a_compaction_killed_after_its_rename_reads_each_turn_once(tmp_path):
    turns = numbered(3)
    add_in_chunks(TurnBuffer(tmp_path), turns, 1)
    merged = buffer_mod._shard_path(tmp_path, 0, 2)
    buffer_mod._write_shard(merged, turns)  # the merged shard is written, the originals not yet deleted
    assert len(shard_files(tmp_path)) == 4
    reopened = TurnBuffer(tmp_path)
    assert reopened.turns == turns and names(tmp_path) == ["shard-000000-000002.parquet"]


def test_a_shard_overlapping_another_raises(tmp_path):
    buf = TurnBuffer(tmp_path, compact_every=1000)
    add_in_chunks(buf, numbered(4), 1)
    buf.flush()  # shard-000000-000003
    buffer_mod._write_shard(buffer_mod._shard_path(tmp_path, 2, 5), numbered(2))  # not this buffer's
    with pytest.raises(BufferError, match="overlaps"):
        TurnBuffer(tmp_path)


def test_shards_are_plain_parquet_for_pandas_and_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets
    import pandas

    turns = make_episode("a", 3, source="random") + make_episode("b", 2, source="qwen")
    buf = TurnBuffer(tmp_path / "data", compact_every=1000)
    add_in_chunks(buf, turns, 2)
    frame = pandas.read_parquet(tmp_path / "data")
    assert len(frame) == 5 and list(frame.columns) == SCHEMA.names
    assert sorted(frame["reply"]) == sorted(t.reply for t in turns)
    files = [str(p) for p in shard_files(tmp_path / "data")]
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 5 and ds.column_names == SCHEMA.names
    assert sorted(ds["source"]) == ["qwen", "qwen", "random", "random", "random"]


def test_reopen_sees_same_turns(tmp_path):
    buf = TurnBuffer(tmp_path, shard_size=3)
    add_in_chunks(buf, numbered(7), 3)
    buf.add(make_episode("long", 4))
    reopened = TurnBuffer(tmp_path, shard_size=3)
    assert reopened.turns == buf.turns
    assert len(reopened) == 11
    with TurnBuffer(tmp_path) as writer:
        writer.add(numbered(1))  # leaving the block compacts the small tail
    assert TurnBuffer(tmp_path).turns == buf.turns + numbered(1)


def test_turns_property_is_a_copy(tmp_path):
    buf = TurnBuffer(tmp_path)
    buf.add(numbered(2))
    buf.turns.clear()
    assert len(buf) == 2


def test_episodes_sorted_by_t(tmp_path):
    buf = TurnBuffer(tmp_path)
    buf.add([make_turn("x", 2, done=True), make_turn("y", 0), make_turn("x", 0), make_turn("x", 1)])
    eps = buf.episodes()
    assert list(eps) == ["x", "y"]
    assert [turn.t for turn in eps["x"]] == [0, 1, 2]


# ---- FIFO cap ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "max_turns", "chunk"),
    [
        (10, 7, 3),  # cap falls inside a shard: partial rewrite
        (9, 6, 3),  # cap falls on a shard boundary: whole shards deleted
        (9, 5, 3),  # one whole shard deleted and the next rewritten
        (12, 2, 5),  # cap smaller than a shard
    ],
)
def test_fifo_cap_keeps_newest(tmp_path, n, max_turns, chunk):
    turns = numbered(n)
    buf = TurnBuffer(tmp_path, max_turns=max_turns, shard_size=chunk)
    add_in_chunks(buf, turns, chunk)
    buf.flush()
    assert buf.turns == turns[-max_turns:]
    assert [pair[0] for pair in buf.transitions()] == turns[-max_turns:]
    assert sum(pq.read_metadata(p).num_rows for p in shard_files(tmp_path)) == max_turns
    assert TurnBuffer(tmp_path).turns == turns[-max_turns:]


def test_fifo_cap_across_adds_and_shard_names_keep_growing(tmp_path):
    turns = numbered(20)
    buf = TurnBuffer(tmp_path, max_turns=8, shard_size=100, compact_every=1000)
    add_in_chunks(buf, turns, 3)
    assert buf.turns == turns[-8:]
    assert names(tmp_path) == sorted(names(tmp_path)) and names(tmp_path)[-1] == "shard-000006-000006.parquet"
    assert TurnBuffer(tmp_path).turns == turns[-8:]


def test_fifo_cap_applied_when_reopening_with_smaller_cap(tmp_path):
    turns = numbered(6)
    add_in_chunks(TurnBuffer(tmp_path, shard_size=2), turns, 2)
    assert TurnBuffer(tmp_path, max_turns=3).turns == turns[-3:]
    assert TurnBuffer(tmp_path).turns == turns[-3:]


def test_failed_rewrite_leaves_old_shard_intact(tmp_path, monkeypatch):
    turns = numbered(5)
    buf = TurnBuffer(tmp_path, max_turns=3, shard_size=100)
    buf.add(turns[:3])
    (old_shard,) = shard_files(tmp_path)
    before = digest(old_shard)
    real_write = buffer_mod.pq.write_table
    calls = []

    def write_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the new shard is written; the cap's rewrite of the old one dies mid-way
            raise OSError("disk full")
        real_write(*args, **kwargs)

    monkeypatch.setattr(buffer_mod.pq, "write_table", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        buf.add(turns[3:])
    assert digest(old_shard) == before
    assert list(tmp_path.glob("*.tmp")) == []
    monkeypatch.undo()
    assert TurnBuffer(tmp_path, max_turns=3).turns == turns[-3:]


# ---- transitions and sampling ------------------------------------------------------------------------


def test_transitions_pair_next_turn_done_and_cut_episodes(tmp_path):
    a = make_episode("a", 3)  # complete
    cut = [make_turn("cut", 0), make_turn("cut", 1)]  # killed collection: no turn 2, never done
    front_cut = [make_turn("fc", 1), make_turn("fc", 2, done=True)]  # FIFO cap removed turn 0
    buf = TurnBuffer(tmp_path)
    # interleave episodes, as parallel collection does
    buf.add([a[0], cut[0], a[1], front_cut[0], cut[1], a[2], front_cut[1]])
    assert buf.transitions() == [
        (a[0], a[1]),
        (cut[0], cut[1]),
        (a[1], a[2]),
        (front_cut[0], front_cut[1]),
        (a[2], None),
        (front_cut[1], None),
    ]


def test_transitions_cache_invalidated_on_add_and_cap(tmp_path):
    buf = TurnBuffer(tmp_path, max_turns=3, shard_size=100)
    buf.add([make_turn("a", 0)])
    assert buf.transitions() == []
    buf.add([make_turn("a", 1, done=True)])
    assert len(buf.transitions()) == 2
    buf.add(numbered(2))  # cap drops ("a", 0)
    assert [pair[0].episode_id for pair in buf.transitions()] == ["a", "ep000", "ep001"]


def test_sample_reproducible_with_seed(tmp_path):
    buf = TurnBuffer(tmp_path)
    buf.add([turn for i in range(10) for turn in make_episode(f"e{i}", 3)])
    first = buf.sample(16, np.random.default_rng(123))
    again = buf.sample(16, np.random.default_rng(123))
    other = buf.sample(16, np.random.default_rng(456))
    assert len(first) == 16
    assert first == again
    assert first != other
    valid = buf.transitions()
    assert all(pair in valid for pair in first)


def test_sample_empty_raises(tmp_path):
    buf = TurnBuffer(tmp_path)
    buf.add([make_turn("cut", 0)])
    with pytest.raises(BufferError, match="no usable transitions"):
        buf.sample(1, np.random.default_rng(0))


def test_stats(tmp_path):
    buf = TurnBuffer(tmp_path)
    buf.add(make_episode("win", 2, reward=1.0, source="random"))
    buf.add(make_episode("lose", 3, reward=-1.0, source="qwen", valid=False))
    buf.add([make_turn("cut", 0, reward=5.0, source="qwen")])  # incomplete: no return/success
    stats = buf.stats()
    assert stats["buffer/turns"] == 6
    assert stats["buffer/episodes"] == 3
    assert stats["buffer/valid_frac"] == pytest.approx(3 / 6)
    assert stats["buffer/mean_return"] == pytest.approx(0.0)
    assert stats["buffer/success_frac"] == pytest.approx(0.5)
    assert stats["buffer/by_source"] == {"random": 2, "qwen": 4}


def test_stats_empty(tmp_path):
    stats = TurnBuffer(tmp_path).stats()
    assert stats["buffer/turns"] == 0 and stats["buffer/by_source"] == {}
    assert math.isnan(stats["buffer/mean_return"]) and math.isnan(stats["buffer/success_frac"])


# ---- corruption and left-overs -------------------------------------------------------------------


def write_three_shards(path: Path) -> list[Turn]:
    turns = numbered(9)
    with TurnBuffer(path, shard_size=3) as buf:
        add_in_chunks(buf, turns, 3)
    assert len(shard_files(path)) == 3
    return turns


def test_truncated_shard_raises_clear_error_and_others_untouched(tmp_path):
    turns = write_three_shards(tmp_path)
    bad = shard_files(tmp_path)[1]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    before = {p.name: digest(p) for p in shard_files(tmp_path)}
    with pytest.raises(BufferError) as err:
        TurnBuffer(tmp_path, max_turns=2)
    message = str(err.value)
    assert bad.name in message and "truncated or corrupt" in message and "delete this shard" in message
    assert err.value.__cause__ is not None
    assert {p.name: digest(p) for p in shard_files(tmp_path)} == before
    bad.rename(tmp_path / "bad.parquet.quarantine")
    assert TurnBuffer(tmp_path).turns == turns[:3] + turns[6:]


def test_garbage_shard_raises(tmp_path):
    write_three_shards(tmp_path)
    (tmp_path / "shard-000003-000003.parquet").write_bytes(b"not a parquet file at all")
    with pytest.raises(BufferError, match="shard-000003-000003.parquet"):
        TurnBuffer(tmp_path)


@pytest.mark.parametrize("metadata", [{SCHEMA_VERSION_KEY: b"999"}, None])
def test_wrong_or_missing_schema_version_raises(tmp_path, metadata):
    write_three_shards(tmp_path)
    table = buffer_mod._turns_to_table(numbered(2)).replace_schema_metadata(metadata)
    pq.write_table(table, tmp_path / "shard-000003-000003.parquet")
    with pytest.raises(BufferError, match="schema version") as err:
        TurnBuffer(tmp_path)
    assert "shard-000003-000003.parquet" in str(err.value)


def test_leftover_tmp_file_ignored(tmp_path):
    turns = write_three_shards(tmp_path)
    (tmp_path / "shard-000003-000003.parquet.tmp").write_bytes(b"half a shard from a killed run")
    (tmp_path / "shard-000003-000003.parquet.4242.tmp").write_bytes(b"\x00" * 10)
    buf = TurnBuffer(tmp_path, shard_size=3)
    assert buf.turns == turns
    buf.add(numbered(1))
    assert TurnBuffer(tmp_path).turns == turns + numbered(1)


def test_rejects_non_turns_and_bad_config(tmp_path):
    with pytest.raises(TypeError):
        TurnBuffer(tmp_path).add([{"episode_id": "x"}])
    with pytest.raises(ValueError):
        TurnBuffer(tmp_path, shard_size=0)
    with pytest.raises(ValueError):
        TurnBuffer(tmp_path, compact_every=1)
    with pytest.raises(ValueError):
        TurnBuffer(tmp_path, max_turns=0)


def test_min_return_to_go(tmp_path):
    buf = TurnBuffer(tmp_path)
    with pytest.raises(BufferError, match="empty"):
        buf.min_return_to_go()
    # rewards per turn: [-2, 3, -4] -> returns-to-go [-3, -1, -4]; [1, -1] -> [0, -1]
    buf.add([make_turn("a", t, reward=r, done=t == 2) for t, r in enumerate([-2.0, 3.0, -4.0])])
    buf.add([make_turn("b", t, reward=r, done=t == 1) for t, r in enumerate([1.0, -1.0])])
    assert buf.min_return_to_go() == pytest.approx(-4.0)
    buf.add([make_turn("c", 0, reward=-1.5, done=False), make_turn("c", 1, reward=-3.0, done=True)])
    assert buf.min_return_to_go() == pytest.approx(-4.5)


def test_has_episode_follows_adds_the_cap_and_a_reopen(tmp_path):
    buf = TurnBuffer(tmp_path, max_turns=4)
    buf.add(make_episode("a", 2))
    assert buf.has_episode("a") and not buf.has_episode("b")
    buf.add(make_episode("b", 2))
    assert buf.has_episode("b")  # added after the id set was built
    buf.add(make_episode("c", 2))  # the cap drops episode a
    assert not buf.has_episode("a") and buf.has_episode("b") and buf.has_episode("c")
    again = TurnBuffer(tmp_path, max_turns=4)
    assert [again.has_episode(e) for e in "abc"] == [False, True, True]
