"""Dataset quality by source (vlmq_core.survey), its figures and the sample browser, on hand-made buffers whose
every number is known."""

from __future__ import annotations

import math

import pytest

from vlmq_core.buffer import TurnBuffer
from vlmq_core.config import ConfigError
from vlmq_core.plots import dataset_quality, return_distributions
from vlmq_core.survey import (
    quality_table,
    returns_by_source,
    source_quality,
    survey_config,
    task_limit,
)
from vlmq_core.turns import Turn
from vlmq_core.widgets import SampleBrowser, StaticHTML, browse_samples, static_samples


def _episode(eid: str, rewards: list[float], source: str, strategy: str, valid: list[bool] | None = None) -> list[Turn]:
    valid = valid or [True] * len(rewards)
    return [
        Turn(
            episode_id=eid,
            t=t,
            task="vlmq/NumberLine-v0",
            prompt=f"prompt {eid} {t}",
            image=None,
            reply="[action] +" if ok else "no <tag>",
            reward=r,
            done=t == len(rewards) - 1,
            source=source,
            strategy=strategy,
            valid=ok,
        )  # fmt: skip
        for t, (r, ok) in enumerate(zip(rewards, valid, strict=True))
    ]


@pytest.fixture
def buffer(tmp_path) -> TurnBuffer:
    buf = TurnBuffer(tmp_path / "data")
    buf.add(_episode("r1", [-1.0, 1.0], "random", "random"))  # success, return 0
    buf.add(_episode("r2", [-1.0, -1.0, -1.0], "random", "random"))  # failure, return -3
    buf.add(_episode("o1", [1.0], "oracle@0.5", "oracle"))
    buf.add(_episode("m1", [-2.0, -2.0, -10.0], "model", "agent", valid=[False, True, False]))
    buf.add(_episode("cut", [-1.0, -1.0], "random", "random")[:1])  # cut short: not a complete episode
    return buf


def test_source_quality_against_a_hand_computation(buffer):
    rows = {r["source"]: r for r in source_quality(buffer)}
    assert list(rows) == ["random", "oracle@0.5", "model/agent", "all"]  # the cut episode is left out
    r = rows["random"]
    assert (r["episodes"], r["turns"], r["success"], r["valid"], r["length"]) == (2, 5, 0.5, 1.0, 2.5)
    assert r["success_se"] == pytest.approx(math.sqrt(0.25 / 2)) and r["return"] == -1.5
    assert r["return_se"] == pytest.approx(math.sqrt(((0 + 1.5) ** 2 + (-3 + 1.5) ** 2) / 1 / 2))
    m = rows["model/agent"]
    assert (m["success"], m["return"], m["valid"], m["return_se"]) == (0.0, -14.0, pytest.approx(1 / 3), 0.0)
    a = rows["all"]
    assert (a["episodes"], a["turns"], a["success"]) == (4, 9, 0.5)
    assert returns_by_source(buffer) == {"random": [0.0, -3.0], "oracle@0.5": [1.0], "model/agent": [-14.0]}


def test_quality_table_and_limits(buffer):
    table = quality_table({"NumberLine": source_quality(buffer), "BabyAI-GoToLocal": source_quality(buffer)})
    lines = table.splitlines()
    assert lines[2] == "| NumberLine (100.0%) | random | 2 | 50% ± 35% | -1.50 ± 1.50 | 100% | 2.5 |"
    assert lines[3].startswith("|  | oracle@0.5 | 1 | 100% ± 0%") and "| BabyAI-GoToLocal (–) | random |" in table
    assert task_limit("Blackjack") == pytest.approx(0.4295, abs=1e-4) and task_limit("BabyAI-GoTo") is None


def test_survey_config_sets_task_path_sources_then_overrides():
    sources = [{"strategy": "random", "episodes": 5}, {"strategy": "oracle", "episodes": 3, "corrupt_rate": 0.25}]
    cfg = survey_config("Blackjack", "/x/data", sources, ["data.sources.0.episodes=2", "collect.num_envs=3"])
    assert cfg.collect.task == "Blackjack" and cfg.data.path == "/x/data" and cfg.collect.num_envs == 3
    assert [(s.strategy, s.episodes, s.corrupt_rate) for s in cfg.data.sources] == [
        ("random", 2, 0.0),
        ("oracle", 3, 0.25),
    ]
    with pytest.raises(ConfigError, match="corrupt"):
        survey_config("Blackjack", "/x", [{"strategy": "oracle", "corrupt": 0.5}])


def test_quality_figures(buffer):
    rows = source_quality(buffer)
    fig = dataset_quality({"NumberLine": rows, "Blackjack": rows}, {"NumberLine": 1.0, "Blackjack": None})
    success, valid = fig.data[0], fig.data[1]
    assert list(success.x) == ["random", "oracle@0.5", "model: agent", "all"] and list(success.y) == [0.5, 1, 0, 0.5]
    assert list(valid.y) == pytest.approx([1, 1, 1 / 3, 7 / 9])
    assert len(fig.data) == 4 and [s.y0 for s in fig.layout.shapes] == [1.0]  # one limit line, NumberLine's
    box = return_distributions({"NumberLine": returns_by_source(buffer)})
    assert [t.name for t in box.data] == ["random", "oracle@0.5", "model: agent"] and list(box.data[0].y) == [0, -3]


def test_sample_browser_filters_and_static_cards(buffer):
    turns = buffer.turns
    ui = SampleBrowser(turns)
    assert "10 of 10 turns" in ui.count.value and "prompt r1 0" in ui.card.value
    ui.validity.value = "invalid"
    assert "2 of 10 turns" in ui.count.value and "no &lt;tag&gt;" in ui.card.value  # model text escaped
    ui.index.value = 1
    assert "turn 2" in ui.card.value
    ui.source.value = "oracle@0.5/oracle"
    assert "no turn passes" in ui.card.value
    static = static_samples(turns)
    assert static.count("<details>") == 3 and "3 of 10 turns" in static  # one per task and source
    assert isinstance(browse_samples(turns), StaticHTML)  # no kernel here: no dead controls
