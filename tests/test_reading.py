"""The renders the embedded VLM learns to read: states, captions, fields and questions."""

import numpy as np
import pytest

from vlmq_core import reading as rd


def test_a_seed_picks_one_state_and_its_caption_is_the_summary_less_what_the_picture_cannot_show():
    for task in rd.TASKS:
        a, b = rd.reading(task, rd.TRAIN_SEED + 5), rd.reading(task, rd.TRAIN_SEED + 5)
        assert a.caption == b.caption and np.array_equal(np.asarray(a.image), np.asarray(b.image))
        assert a.fields and a.questions[0] == (rd.TRANSCRIBE, a.caption)
        assert "Mission" not in a.caption
    captions = {rd.reading("Points24", rd.TRAIN_SEED + i).caption for i in range(20)}
    assert len(captions) > 15  # seeds reach different deals and formulas
    formulas = {rd.reading("Points24", rd.TRAIN_SEED + i).fields["formula"] for i in range(40)}
    assert len(formulas) > 3  # the moves after the reset write formulas


def test_fields_of_each_task():
    assert rd.fields("NumberLine", "Target: 4. Current: 5.") == {"target": "4", "current": "5"}
    assert rd.fields("Blackjack", "Dealer shows J. Your cards: 3, Q (13).") == {
        "dealer": "J",
        "player": "3, Q",
        "total": "13",
    }
    done = rd.fields("Blackjack", "Dealer has 9, A (soft 20). Your cards: 7, 9 (16). You lose.")
    assert done == {"dealer": "9, A", "player": "7, 9", "total": "16", "outcome": "You lose"}
    assert rd.fields("Points24", "Cards: J, 3, 3, Q. Formula: ( 9 +") == {"cards": "J, 3, 3, Q", "formula": "( 9 +"}
    view = "You see a wall 2 steps right\nYou see a red ball 1 step forward\nYou see a green key 3 steps left"
    got = rd.fields("BabyAI-GoToLocal", view)
    assert got == {"front": "a red ball", "objects": "a green key 3 steps left; a red ball 1 step forward"}
    assert rd.fields("BabyAI-GoToLocal", "You see a wall 1 step left")["front"] == "nothing"
    # a reply that is not a description reads as nothing at all, so it scores wrong on every field
    assert rd.fields("BabyAI-GoToLocal", "I think there is a ball") == {}
    assert rd.fields("NumberLine", "The target is 4") == {}
    with pytest.raises(ValueError, match="readable tasks"):
        rd.fields("MiniWoB-click-test", "x")


def test_a_labels_case_is_not_read_but_a_fields_is():
    said = "dealer shows J. your cards: 3, Q (13)."
    assert rd.fields("Blackjack", said) == rd.fields("Blackjack", "Dealer shows J. Your cards: 3, Q (13).")
    assert rd.fields("Blackjack", "Dealer shows j. Your cards: 3, q (13).") == {
        "dealer": "j",
        "player": "3, q",
        "total": "13",
    }
    assert rd.fields("NumberLine", "TARGET: 4. current: 5.") == {"target": "4", "current": "5"}
    assert rd.fields("EZPoints", "cards: 5, 7. formula: 7 + 5") == {"cards": "5, 7", "formula": "7 + 5"}
    view = "you see a red ball 1 step forward\nyou carry a blue key"
    assert rd.fields("BabyAI-PickupLoc", view) == {
        "carrying": "a blue key",
        "front": "a red ball",
        "objects": "a red ball 1 step forward",
    }
    assert rd.fields("BabyAI-PickupLoc", "You see a Red ball 1 step forward")["front"] == "a Red ball"


def test_questions_ask_each_field_and_held_out_seeds_are_disjoint():
    r = rd.reading("Blackjack", rd.TRAIN_SEED)
    asked = dict(r.questions[1:])
    assert asked["Which cards does the dealer show?"] == r.fields["dealer"]
    assert asked["What is your total?"] == r.fields["total"]
    assert rd.HELD_OUT_SEED > rd.TRAIN_SEED + 3 * 100_000_000  # both training steps' seeds stay below
    babyai = rd.reading("BabyAI-GoToLocal", rd.HELD_OUT_SEED)
    assert babyai.image.size == (224, 224)  # the agent's point of view, 7x7 cells
    assert dict(babyai.questions[1:])["What is right in front of you?"] == babyai.fields["front"]
