"""Base-model prompting (notebook 01): failure kinds, the image-only view, and scores that add up."""

import pytest

from vlmq_core import prompting
from vlmq_core.collect import CollectConfig, SourceConfig, collect
from vlmq_core.config import ConfigError
from vlmq_core.envs import make_env
from vlmq_core.envs.text_action import FAILURE_KINDS, IMAGE_ONLY, failure_kind


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        ("I move left.", "no [action] tag"),
        ("[action]", "nothing after the tag"),
        ("**[action]:** ``", "nothing after the tag"),
        ("[action] + because the target is right", "an action, then more text"),
        ("[action] go forward twice", "an action, then more text"),
        ("[action] jump", "not a valid action"),
        ("[action] ++", "an action, then more text"),
    ],
)
def test_failure_kinds(reply, kind):
    actions = ["+", "-", "go forward", "turn left"]
    assert failure_kind(reply, actions) == kind and kind in FAILURE_KINDS


def test_the_image_only_view_withholds_the_summary_from_the_prompt():
    shown, hidden = make_env("NumberLine"), make_env("NumberLine", show_text=False)
    a, _ = shown.reset(seed=3)
    b, _ = hidden.reset(seed=3)
    assert a["text"] == b["text"] and a["text"] in a["prompt"]
    assert a["text"] not in b["prompt"] and b["prompt"].endswith(f"Observation: {IMAGE_ONLY}")
    assert a["prompt"].replace(a["text"], IMAGE_ONLY) == b["prompt"]
    b2, *_ = hidden.step("nonsense")  # the error line stays, the summary stays out
    assert "invalid" in b2["prompt"] and b2["text"] not in b2["prompt"]
    with pytest.raises(ConfigError, match="see no state"):
        CollectConfig(use_images=False, observation_text=False)


def test_a_text_only_model_cannot_be_scored_without_the_text(llama_policy):
    assert prompting.views_for(llama_policy, ["both", "image", "text"]) == ["text"]
    with pytest.raises(ConfigError, match="text-only model"):
        collect(llama_policy, CollectConfig(observation_text=False), SourceConfig("agent", 1, 0), progress=False)
    with pytest.raises(ValueError, match="Unknown view"):
        prompting.views_for(llama_policy, ["pixels"])


def test_scores_add_up_and_the_vlm_sees_only_the_image(idefics3_policy):
    """On a tiny random VLM every reply is invalid or nearly so: the failure counts add up to the invalid replies,
    and in the image view the stored prompts hold no state summary while the images are there."""
    cfg = CollectConfig(task="NumberLine", num_envs=3, max_reply_tokens=4)
    assert prompting.views_for(idefics3_policy, ["both", "image"]) == ["both", "image"]
    for strategy in ("agent", "min_format"):
        m = prompting.score(idefics3_policy, cfg, strategy, "image", episodes=3, seed=5, progress=False)
        assert m["episodes"] == 3 and m["turns"] == round(m["length"] * 3)
        assert sum(m["failures"].values()) == round((1 - m["valid"]) * m["turns"])
        assert set(m["examples"]) == set(m["failures"])
    sink = prompting._Replies()
    collect(
        idefics3_policy,
        prompting.dataclasses.replace(cfg, observation_text=False),
        SourceConfig("agent", 2, 5),
        sink,
        progress=False,
    )
    assert sink.turns and all(t.prompt.endswith(IMAGE_ONLY) or "invalid" in t.prompt for t in sink.turns)
    assert all(t.obs not in t.prompt and t.image is not None for t in sink.turns)
    results = {"tiny": {"NumberLine": {"agent/image": m}}}
    fig = prompting.valid_syntax_bars(results)
    assert fig.data[0].y == (m["valid"],) and fig.data[0].name == "tiny · agent · image"
    table = prompting.failure_table(results)
    assert table.count("\n") == 1 + len(m["failures"])
    assert (
        prompting.score_table(results)
        .splitlines()[2]
        .startswith(f"| tiny | NumberLine | agent · image | {m['success']:.0%}")
    )


def test_first_replies_are_the_episodes_first_turns_in_seed_order(llama_policy):
    from vlmq_core.collect import CollectConfig, SourceConfig, collect

    cfg = CollectConfig(task="NumberLine", num_envs=2, max_reply_tokens=4)
    replies = prompting.first_replies(llama_policy, cfg, episodes=3, seed=7)
    sink = prompting._Replies()
    collect(llama_policy, cfg, SourceConfig("agent", 3, 7), sink, progress=False)
    assert replies == [t.reply for t in sorted(sink.turns, key=lambda t: t.seed) if t.t == 0]
    assert len(replies) == 3
