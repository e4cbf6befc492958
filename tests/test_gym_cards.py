"""Gym Cards tasks: Blackjack, EZPoints, Points24 (and NumberLine's oracle): rules, formulas, rendering,
text summaries, seeding, the text wrapper, oracles and the computed limits."""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from fractions import Fraction
from itertools import combinations_with_replacement

import gymnasium
import numpy as np
import pytest
from PIL import Image

from vlmq_core.envs import CATALOG, get_task, make_env
from vlmq_core.envs.blackjack import (
    BlackjackEnv,
    action_values,
    blackjack_oracle,
    dealer_final_distribution,
    hand_sum,
    optimal_action,
)
from vlmq_core.envs.cards import SUITS, Card, card_back, card_face
from vlmq_core.envs.ezpoints import EZPointsEnv
from vlmq_core.envs.formula import (
    FormulaError,
    closest_expression,
    evaluate,
    expressions,
    find_expression,
    group_completion,
    next_token_error,
    prefix_state,
    reachable_values,
    render,
    solvable,
    token_completion,
)
from vlmq_core.envs.limits import (
    blackjack_max_win_rate,
    blackjack_outcomes,
    ezpoints_raw_solvable_share,
    points24_solvable_share,
    task_limits,
)
from vlmq_core.envs.oracles import OracleConfig, oracle_reply
from vlmq_core.envs.points24 import PointsEnv, parse_points_action, points24_plan
from vlmq_core.envs.text_action import parse_action

STAND, HIT = 0, 1
BLACKJACK_ID, EZPOINTS_ID, POINTS24_ID = "vlmq/Blackjack-v0", "vlmq/EZPoints-v0", "vlmq/Points24-v0"
P24_TOKENS = [*(str(n) for n in range(1, 11)), "+", "-", "*", "/", "(", ")", "="]
EZ_TOKENS = [*(str(n) for n in range(1, 11)), "+", "*", "="]


class ScriptedRng:
    """Stands in for ``np_random``: `draw_card` gets the scripted (rank, suit) cards in order."""

    def __init__(self, cards: list[tuple[int, str]]):
        self.values = [v for rank, suit in cards for v in (rank, SUITS.index(suit))]

    def integers(self, *args):
        return self.values.pop(0)


def cards(*specs: str) -> list[Card]:
    """Cards from codes like ``"AS"``, ``"10H"``, ``"QD"``."""
    ranks = {"A": 1, "J": 11, "Q": 12, "K": 13}
    return [Card(ranks.get(s[:-1]) or int(s[:-1]), s[-1]) for s in specs]


def blackjack_at(player: list[str], dealer: list[str], draws: list[str] = ()) -> BlackjackEnv:
    """A reset Blackjack env forced into a hand; later draws come from `draws` in order."""
    env = BlackjackEnv()
    env.reset(seed=0)
    env.player, env.dealer = cards(*player), cards(*dealer)
    env.np_random = ScriptedRng([(c.rank, c.suit) for c in cards(*draws)])
    return env


def points_at(env: PointsEnv, numbers: list[int]) -> PointsEnv:
    """`env` reset and given cards with these numbers (10 -> a king, to check face cards count 10)."""
    env.reset(seed=0)
    env.cards = [Card(13 if n == 10 else n, SUITS[i % 4]) for i, n in enumerate(numbers)]
    return env


def write(env: PointsEnv, formula: str) -> list[float]:
    """Step the raw env through space-separated tokens; returns the rewards."""
    return [env.step(env.tokens.index(t))[1] for t in formula.split()]


# ---------------------------------------------------------------- registration and gymnasium


@pytest.mark.parametrize(
    ("env_id", "n_actions", "cls"),
    [("vlmq/NumberLine-v0", 2, None), (BLACKJACK_ID, 2, BlackjackEnv), (EZPOINTS_ID, 13, EZPointsEnv)]
    + [(POINTS24_ID, 17, PointsEnv)],
)
def test_gymnasium_make_every_id(env_id, n_actions, cls):
    assert env_id.removeprefix("vlmq/").removesuffix("-v0") in CATALOG and env_id in gymnasium.registry
    env = gymnasium.make(env_id)
    assert env.action_space == gymnasium.spaces.Discrete(n_actions)
    obs, _ = env.reset(seed=1)
    assert env.observation_space.contains(obs)
    assert obs.shape == (300, 300, 3) and obs.dtype == np.uint8
    obs, *_ = env.step(env.action_space.n - 1)
    assert obs.shape == (300, 300, 3) and obs.dtype == np.uint8 and obs.flags.writeable
    if cls is not None:
        assert isinstance(env.unwrapped, cls)
    assert len(get_task(env_id).prompt.actions) == n_actions


def test_short_names_and_prompts():
    for name, env_id in [("Blackjack", BLACKJACK_ID), ("EZPoints", EZPOINTS_ID), ("Points24", POINTS24_ID)]:
        spec = get_task(name)
        assert spec.env_id == env_id and spec.oracle is not None and spec.text_config.invalid_reward == -2
        assert len(spec.prompt.description.split()) < 40
    assert get_task(BLACKJACK_ID).prompt.actions == ["stand", "hit"]
    assert get_task(EZPOINTS_ID).prompt.actions == EZ_TOKENS
    assert get_task(POINTS24_ID).prompt.actions == P24_TOKENS
    assert get_task("Points24").text_config.max_steps == 20
    assert get_task("EZPoints").text_config.max_steps == 10


def test_invalid_action_index_raises():
    for env in (BlackjackEnv(), EZPointsEnv(), PointsEnv()):
        env.reset(seed=0)
        with pytest.raises(ValueError, match="invalid action"):
            env.step(env.action_space.n)
        with pytest.raises(ValueError, match="invalid action"):
            env.step(-1)


# ---------------------------------------------------------------- Blackjack rules


@pytest.mark.parametrize(
    ("values", "expected"),
    [([1, 5], (16, True)), ([1, 1], (12, True)), ([1, 5, 10], (16, False)), ([10, 6, 9], (25, False))]
    + [([1, 10], (21, True)), ([1, 1, 9], (21, True)), ([2, 2], (4, False))],
)
def test_hand_sum(values, expected):
    assert hand_sum(values) == expected


def test_hit_bust_loses_and_ends():
    env = blackjack_at(["10S", "6H"], ["9C", "7D"], draws=["QH"])
    _, reward, terminated, truncated, info = env.step(HIT)
    assert (reward, terminated, truncated) == (-1.0, True, False)
    assert info["player_sum"] == 26 and info["outcome"] == "loss"
    assert info["dealer_cards"] == ["9C", "7D"]  # the dealer does not play after a bust
    with pytest.raises(RuntimeError):
        env.step(STAND)


def test_soft_ace_becomes_hard_instead_of_busting():
    env = blackjack_at(["AS", "5H"], ["9C", "7D"], draws=["9D"])
    _, reward, terminated, _, info = env.step(HIT)
    assert (reward, terminated) == (0.0, False)
    assert (info["player_sum"], info["usable_ace"]) == (15, False)


def test_dealer_stands_on_soft_17():
    env = blackjack_at(["10S", "8H"], ["AC", "6D"], draws=["KH"])
    _, reward, terminated, _, info = env.step(STAND)
    assert info["dealer_cards"] == ["AC", "6D"] and info["dealer_sum"] == 17
    assert (reward, terminated) == (1.0, True)


def test_dealer_hits_soft_16_and_hard_16():
    env = blackjack_at(["10S", "8H"], ["AC", "5D"], draws=["2H"])
    _, reward, *_ = env.step(STAND)
    assert env.state()["dealer_cards"] == ["AC", "5D", "2H"] and env.dealer_sum == 18 and reward == 0.0
    env = blackjack_at(["10S", "8H"], ["10C", "6D"], draws=["AH", "3S"])
    _, reward, *_ = env.step(STAND)
    assert env.state()["dealer_cards"] == ["10C", "6D", "AH"] and env.dealer_sum == 17 and reward == 1.0


def test_dealer_bust_wins_and_equal_sums_draw():
    env = blackjack_at(["10S", "2H"], ["10C", "6D"], draws=["9H"])
    _, reward, *_ = env.step(STAND)
    assert env.dealer_sum == 25 and reward == 1.0 and env.outcome() == "win"
    env = blackjack_at(["10S", "9H"], ["10C", "9D"])
    _, reward, *_ = env.step(STAND)
    assert reward == 0.0 and env.outcome() == "draw"


def test_natural_gets_no_bonus_and_player_may_hit_on_21():
    env = blackjack_at(["AS", "KH"], ["10C", "7D"])
    _, reward, *_ = env.step(STAND)
    assert reward == 1.0
    env = blackjack_at(["AS", "KH"], ["10C", "7D"], draws=["5C"])
    _, reward, terminated, *_ = env.step(HIT)
    assert (reward, terminated, env.player_sum) == (0.0, False, 16)


def test_blackjack_text_and_hidden_hole_card():
    env = blackjack_at(["AS", "5H"], ["QC", "7D"], draws=["2H"])
    assert env.text() == "Dealer shows Q. Your cards: A, 5 (soft 16)."
    frame = env.render()
    env.dealer[1] = Card(3, "H")
    assert np.array_equal(env.render(), frame)  # the hole card is not in the picture
    env.dealer[1] = Card(7, "D")
    env.step(STAND)
    assert env.text() == "Dealer has Q, 7 (17). Your cards: A, 5 (soft 16). You lose."
    assert not np.array_equal(env.render(), frame)
    bust = blackjack_at(["10S", "6H"], ["9C", "7D"], draws=["9H"])
    bust.step(HIT)
    assert bust.text() == "Dealer has 9, 7 (16). Your cards: 10, 6, 9 (25, bust). You lose."


# ---------------------------------------------------------------- Blackjack dynamic programming


def _dealer_reference(showing: int) -> dict[int, float]:
    """Dealer final-sum distribution by explicit enumeration of card sequences (a reference loop)."""
    probs = {v: (4 if v == 10 else 1) / 13 for v in range(1, 11)}
    out: Counter = Counter()
    stack = [([showing], 1.0)]
    while stack:
        hand, p = stack.pop()
        total = hand_sum(hand)[0]
        if total >= 17:
            out[min(total, 22)] += p
            continue
        stack += [([*hand, v], p * q) for v, q in probs.items()]
    return dict(out)


@pytest.mark.parametrize("showing", [1, 2, 6, 10])
def test_dealer_distribution_matches_enumeration(showing):
    exact = dealer_final_distribution(showing)
    assert sum(exact.values()) == 1
    reference = _dealer_reference(showing)
    assert set(exact) == set(reference)
    for final, p in exact.items():
        assert float(p) == pytest.approx(reference[final], abs=1e-12)


# Basic strategy without doubling/splitting, dealer stands on soft 17 (columns: dealer 2..10, then A).
BASIC_STRATEGY = {
    **{("hard", s): "HHHHHHHHHH" for s in range(4, 12)},
    ("hard", 12): "HHSSSHHHHH",
    **{("hard", s): "SSSSSHHHHH" for s in range(13, 17)},
    **{("hard", s): "SSSSSSSSSS" for s in range(17, 22)},
    **{("soft", s): "HHHHHHHHHH" for s in range(12, 18)},
    ("soft", 18): "SSSSSSSHHH",
    **{("soft", s): "SSSSSSSSSS" for s in range(19, 22)},
}


def test_dp_policy_is_basic_strategy():
    for (kind, total), row in BASIC_STRATEGY.items():
        got = "".join("H" if optimal_action(total, kind == "soft", d) else "S" for d in [*range(2, 11), 1])
        assert got == row, (kind, total)


def test_action_values_bounds_and_bust_error():
    stand, hit = action_values(21, False, 10)
    assert hit == -1 and 0 < stand < 1  # hitting hard 21 always busts
    assert action_values(4, False, 6)[0] == 2 * dealer_final_distribution(6)[22] - 1
    with pytest.raises(ValueError):
        action_values(22, False, 5)
    with pytest.raises(ValueError):
        dealer_final_distribution(11)


# ---------------------------------------------------------------- formulas


@pytest.mark.parametrize(
    ("formula", "value"),
    [("( 3 + 1 ) * 6", 24), ("3 + 1 * 6", 9), ("10 - 2 - 3", 5), ("8 / 2 / 2", 2), ("8 / ( 3 - 8 / 3 )", 24)]
    + [("2 * ( 3 + ( 4 - 1 ) ) / 4", 3), ("1 / 3", Fraction(1, 3)), ("10", 10), ("( ( 7 ) )", 7)],
)
def test_evaluate(formula, value):
    assert evaluate(formula.split()) == value


@pytest.mark.parametrize(
    ("formula", "message"),
    [("1 / ( 2 - 2 )", "division by zero"), ("4 / 0", "expected a number"), ("", "empty"), ("4 +", "too early")]
    + [("( 4 + 2", "too early"), ("4 + 2 )", "unexpected"), ("4 4", "unexpected"), ("+ 4", "expected")]
    + [("( )", "expected"), ("__import__('os') 1", "expected")],
)
def test_evaluate_rejects(formula, message):
    with pytest.raises(FormulaError, match=re.escape(message)):
        evaluate(formula.split())


def test_prefix_syntax():
    assert prefix_state([]) == (0, True)
    assert prefix_state("( ( 3 +".split()) == (2, True)
    assert prefix_state("( 3 + 4 )".split()) == (0, False)
    assert next_token_error(["3"], "4") == "a number cannot follow a number or ')'"
    assert next_token_error(["3", "+"], "*") == "an operator needs a number or ')' before it"
    assert next_token_error(["3"], ")") == "')' has no matching '('"
    assert next_token_error(["("], ")") == "')' needs a number or ')' before it"
    assert next_token_error(["3"], "(") == "'(' cannot follow a number or ')'"
    assert next_token_error([], "x") == "unknown token 'x'"
    assert next_token_error(["(", "3"], ")") is None
    with pytest.raises(FormulaError):
        prefix_state(["3", "3"])


def test_render_uses_minimal_brackets():
    assert " ".join(render(("-", 1, ("+", 2, 3)))) == "1 - ( 2 + 3 )"
    assert " ".join(render(("+", 1, ("-", 2, 3)))) == "1 + 2 - 3"
    assert " ".join(render(("/", 8, ("*", 2, 2)))) == "8 / ( 2 * 2 )"
    assert " ".join(render(("*", ("+", 1, 2), ("/", 9, 3)))) == "( 1 + 2 ) * 9 / 3"
    for numbers in [(1, 2, 3), (3, 3, 8, 8), (1, 5, 7, 10)]:
        for value, expr in expressions(numbers).items():
            tokens = render(expr)
            assert evaluate(tokens) == value
            assert sorted(int(t) for t in tokens if t.isdecimal()) == list(numbers)


def test_find_expression_agrees_with_value_sets():
    for numbers in combinations_with_replacement(range(1, 11), 3):
        values = reachable_values(numbers)
        for target in (0, 1, 7, 12, 24, -3, Fraction(1, 3)):
            expr = find_expression(numbers, target)
            assert solvable(numbers, target) == (Fraction(target) in values) == (expr is not None)
            if expr is not None:
                assert evaluate(render(expr)) == target
                assert sorted(int(t) for t in render(expr) if t.isdecimal()) == list(numbers)
    for numbers in [(1, 1, 1, 1), (10, 10, 10, 10), (1, 1, 2, 7)]:
        best = min(reachable_values(numbers), key=lambda v: (abs(v - 24), v))
        assert evaluate(render(closest_expression(numbers, 24))) == best
    assert not solvable((1, 1, 1, 1), 24) and solvable((3, 3, 8, 8), 24) and not solvable((10, 10, 10, 10), 24)


def test_group_completion_matches_brute_force_on_random_prefixes():
    rng = random.Random(0)
    for _ in range(60):
        numbers = tuple(sorted(rng.choices(range(1, 11), k=3)))
        target = rng.choice([24, 12, 6, 10, 0])
        prefix: list[str] = []
        for _ in range(rng.randint(0, 4)):
            prefix.append(rng.choice([t for t in P24_TOKENS[:-1] if next_token_error(prefix, t) is None]))
        fast = group_completion(numbers, target, prefix, max_len=16)
        slow = token_completion(numbers, target, prefix, max_len=16)
        assert (fast is None) == (slow is None), (numbers, target, prefix)
        for found in (fast, slow):
            if found is not None:
                full = [*prefix, *found]
                assert evaluate(full) == target and len(full) <= 16
                assert sorted(int(t) for t in full if t.isdecimal()) == list(numbers)


def test_completion_edge_cases():
    assert group_completion((3, 3, 8, 8), 24, ["3", "*", "8"]) is None
    assert group_completion((3, 3, 8, 8), 24, ["9"]) is None  # not a card
    assert group_completion((3, 3, 8, 8), 24, ["+"]) is None  # malformed
    assert group_completion((3, 3, 8, 8), 24, "8 / ( 3 - 3 )".split()) is None  # divides by zero
    deep = group_completion((3, 3, 8, 8), 24, ["(", "(", "("])
    assert evaluate(["(", "(", "(", *deep]) == 24
    assert group_completion((4, 6), 24, ["4", "*", "6"]) == ()
    assert token_completion((4, 8), 12, [], operators=("+", "*"), parens=False) == ("4", "+", "8")
    assert token_completion((4, 8), 12, ["8", "*"], operators=("+", "*"), parens=False) is None


# ---------------------------------------------------------------- Points24 and EZPoints rules


def test_points24_solution_scores_ten():
    env = points_at(PointsEnv(), [3, 3, 8, 8])
    rewards = write(env, "8 / ( 3 - 8 / 3 ) =")
    assert rewards == [0.0] * 9 + [10.0]
    assert env.done and env.solved() and env.state()["formula"] == "8 / ( 3 - 8 / 3 )".split()
    assert env.text() == "Cards: 3, 3, 8, 8. Formula: 8 / ( 3 - 8 / 3 ) = 24. Solved."


def test_face_cards_count_ten():
    env = points_at(PointsEnv(), [10, 10, 2, 2])
    assert env.state()["cards"][0] == "KS" and env.text().startswith("Cards: K, K, 2, 2.")
    assert write(env, "10 + 10 + 2 + 2 =")[-1] == 10.0


def test_number_not_in_hand_and_used_up_are_rejected():
    env = points_at(PointsEnv(), [4, 4, 6, 1])
    _, reward, terminated, _, info = env.step(env.tokens.index("5"))
    assert (reward, terminated, info["formula"]) == (-1.0, False, [])
    assert info["rejected"] == "5 is not on your cards"
    assert write(env, "4 + 4 *") == [0.0, 0.0, 0.0, 0.0]
    _, reward, _, _, info = env.step(env.tokens.index("4"))
    assert reward == -1.0 and info["rejected"] == "all your 4s are already used"
    assert info["formula"] == ["4", "+", "4", "*"]
    write(env, "6 *")
    _, reward, _, _, info = env.step(env.tokens.index("6"))
    assert reward == -1.0 and info["rejected"] == "your 6 is already used"


@pytest.mark.parametrize(
    ("formula", "token", "reason"),
    [("", "+", "operator needs"), ("3", "3", "number cannot follow"), ("3", ")", "no matching"), ("", ")", "needs")]
    + [("( 3", "(", "cannot follow"), ("3 +", "*", "operator needs")],
)
def test_syntax_errors_are_rejected(formula, token, reason):
    env = points_at(PointsEnv(), [3, 3, 8, 8])
    write(env, formula)
    before = list(env.formula)
    _, reward, terminated, _, info = env.step(env.tokens.index(token))
    assert (reward, terminated) == (-1.0, False)
    assert reason in info["rejected"] and env.formula == before


@pytest.mark.parametrize(
    ("formula", "why"),
    [("8 / ( 3 - 3 ) + 8 =", "division by zero"), ("3 * 8 =", "unused cards"), ("3 * 8 + 3 - 8 + (", "open")]
    + [("3 + 3 + 8 + 8 =", "wrong value"), ("=", "empty")],
)
def test_equals_ends_with_minus_one_unless_solved(formula, why):
    env = points_at(PointsEnv(), [3, 3, 8, 8])
    if not formula.endswith("="):
        formula += " ="
    rewards = write(env, formula)
    assert rewards[-1] == -1.0 and env.done, why
    assert env.text().endswith(". Not 24 with all cards.")


def test_unused_cards_fail_even_at_the_target():
    env = points_at(PointsEnv(), [6, 4, 1, 1])
    assert write(env, "6 * 4 =")[-1] == -1.0
    assert env.text() == "Cards: 6, 4, A, A. Formula: 6 * 4 = 24. Not 24 with all cards."


def test_formula_length_limit():
    env = points_at(PointsEnv(max_steps=30), [3, 3, 8, 8])
    assert write(env, " ".join(["("] * 20)) == [0.0] * 20
    _, reward, terminated, truncated, info = env.step(env.tokens.index("3"))
    assert reward == -1.0 and info["rejected"] == "the formula is limited to 20 tokens"
    assert not (terminated or truncated) and len(info["formula"]) == 20


def test_points24_truncates_after_max_steps():
    env = points_at(PointsEnv(), [3, 3, 8, 8])
    for step in range(1, 21):
        _, reward, terminated, truncated, _ = env.step(env.tokens.index("+"))
        assert reward == -1.0 and not terminated and truncated == (step == 20)


def test_ezpoints_rules_and_deals():
    env = points_at(EZPointsEnv(), [4, 8])
    assert env.tokens == tuple(EZ_TOKENS)
    assert write(env, "4 + 8 =") == [0.0, 0.0, 0.0, 10.0]
    env = points_at(EZPointsEnv(), [3, 4])
    assert write(env, "3 + 4 =") == [0.0, 0.0, 0.0, -1.0]
    env = points_at(EZPointsEnv(), [3, 4])
    assert write(env, "* 3 3 4 + *") == [-1.0, 0.0, -1.0, -1.0, 0.0, -1.0]
    assert env.text() == "Cards: 3, 4. Formula: 3 +"
    for seed in range(100):
        env.reset(seed=seed)
        a, b = env.numbers
        assert a + b == 12 or a * b == 12


def test_points24_deals_are_not_filtered():
    env = PointsEnv()
    deals = [tuple(sorted(env.reset(seed=s)[1]["numbers"])) for s in range(300)]
    solvable_share = np.mean([solvable(d, 24) for d in deals])
    assert 0.6 < solvable_share < 0.86  # 73.1% expected; some deals have no solution
    assert all(len(d) == 4 and all(1 <= n <= 10 for n in d) for d in deals)


# ---------------------------------------------------------------- seeding, rendering, text


def _rollout(env: gymnasium.Env, seed: int) -> list:
    obs, info = env.reset(seed=seed)
    trace = [repr(info), obs.tobytes()]
    rng = np.random.default_rng(seed)
    for _ in range(12):
        obs, reward, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        trace += [repr(info), obs.tobytes(), reward, terminated, truncated]
        if terminated or truncated:
            break
    return trace


@pytest.mark.parametrize("cls", [BlackjackEnv, EZPointsEnv, PointsEnv])
def test_reset_seed_reproduces_episode(cls):
    env = cls()
    for seed in (0, 3, 11):
        assert _rollout(env, seed) == _rollout(env, seed) == _rollout(cls(), seed)
    starts = {repr(env.reset(seed=s)[1]) for s in range(10)}
    assert len(starts) > 5


def test_make_env_seed_reproduces_episode_sequence():
    for name in ("Blackjack", "EZPoints", "Points24"):
        runs = []
        for _ in range(2):
            env = make_env(name, seed=4)
            runs.append([repr(env.reset()[1]["state"]) for _ in range(5)])
        assert runs[0] == runs[1] and len(set(runs[0])) > 1


def test_rendering_changes_with_state_and_cards_are_cached():
    env = points_at(PointsEnv(), [3, 3, 8, 8])
    frames = [env.render()]
    for token in "8 / (".split():
        frames.append(env.step(env.tokens.index(token))[0])
    assert all(not np.array_equal(a, b) for a, b in zip(frames, frames[1:], strict=False))
    assert card_face(Card(12, "H"), 64, 90) is card_face(Card(12, "H"), 64, 90)
    assert card_back(62, 88).size == (62, 88)
    red = np.asarray(card_face(Card(12, "H"), 64, 90))
    black = np.asarray(card_face(Card(12, "S"), 64, 90))
    redness = [(img[..., 0].astype(int) - img[..., 2] > 100).any() for img in (red, black)]
    assert redness == [True, False]


def test_long_formula_wraps_inside_the_picture():
    env = points_at(PointsEnv(), [10, 10, 10, 10])
    write(env, "( ( ( ( 10 + 10 ) * 10 ) - 10 ) / ( ( (")
    frame = env.render()
    assert frame.shape == (300, 300, 3)
    assert env.text() == "Cards: K, K, K, K. Formula: ( ( ( ( 10 + 10 ) * 10 ) - 10 ) / ( ( ("


def _play_from_text(text: str, task: str) -> int:
    """An oracle that only reads the text summary (proof that the text holds the decision state)."""
    if task == "Blackjack":
        m = re.fullmatch(r"Dealer shows (\w+)\. Your cards: [\w, ]+ \((soft )?(\d+)\)\.", text)
        showing = {"A": 1, "J": 10, "Q": 10, "K": 10}.get(m.group(1)) or int(m.group(1))
        return optimal_action(int(m.group(3)), bool(m.group(2)), showing)
    m = re.fullmatch(r"Cards: ([\w, ]+)\. Formula: (.*)", text)
    numbers = tuple(sorted({"A": 1, "J": 10, "Q": 10, "K": 10}.get(c) or int(c) for c in m.group(1).split(", ")))
    formula = () if m.group(2) == "(empty)" else tuple(m.group(2).split())
    if task == "Points24":
        planned, tokens = points24_plan(numbers, formula), P24_TOKENS
        plan = None if planned is None else planned[0]
    else:
        plan, tokens = token_completion(numbers, 12, formula, operators=("+", "*"), parens=False, max_len=5), EZ_TOKENS
    return tokens.index(plan[0]) if plan else tokens.index("=")


@pytest.mark.parametrize("task", ["Blackjack", "EZPoints", "Points24"])
def test_text_summary_is_enough_to_play_like_the_oracle(task):
    spec = get_task(task)
    for seed in range(15):
        env = make_env(task, seed=seed)
        obs, _ = env.reset()
        done = False
        while not done:
            action = spec.oracle(env.unwrapped).action
            assert _play_from_text(obs["text"], task) == action, obs["text"]
            obs, _, terminated, truncated, _ = env.step(f"[action] {env.valid_actions[action]}")
            done = terminated or truncated


# ---------------------------------------------------------------- the text wrapper


@pytest.mark.parametrize(
    ("task", "reply", "action"),
    [("Blackjack", "**[action]:** `hit`", 1), ("Blackjack", "I have 12.\n[ACTION] stand", 0)]
    + [("Blackjack", "[action] Hit", None), ("Blackjack", "[action] hit me", None), ("Blackjack", "hit", None)]
    + [("Points24", "[action] 10", 9), ("Points24", "Let me see.\n[action] **10**", 9), ("Points24", "[action] (", 14)]
    + [
        ("Points24", "[action] 1 0", None),
        ("Points24", "[action] 10 because", None),
        ("Points24", "[action] ten", None),
    ]
    + [("EZPoints", "[action] `=`", 12), ("EZPoints", "[Action]: *", 11), ("EZPoints", "[action] -", None)],
)
def test_wrapper_parses_messy_replies(task, reply, action):
    env = make_env(task, seed=0)
    env.reset()
    obs, reward, _, _, info = env.step(reply)
    assert info["action"] == action and info["valid"] == (action is not None)
    if action is None:
        assert reward == -2.0 and "Your previous reply was invalid" in obs["prompt"]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [("[action] *", "*"), ("**[action]:** *", "*"), ("**[action]**: `*`", "*"), ("[action] ** * **", "*")]
    + [("[action]: *\n", "*"), ("[action] **+**", "+"), ("[action] * 3", "3"), ("[action] **", None)]
    + [("[action] * *", None), ("* [action]", None), ("[action] `10`", "10")],
)
def test_points_parser_keeps_the_star_action(reply, expected):
    actions = list(get_task(POINTS24_ID).prompt.actions)
    assert get_task("Points24").parser is get_task("EZPoints").parser is parse_points_action
    assert parse_points_action(reply, actions) == (None if expected is None else actions.index(expected))
    if expected == "*":
        assert parse_action(reply, actions) is None  # the shared parser strips `*` as markdown


def test_wrapper_env_penalty_is_minus_one_and_three_invalid_replies_time_out():
    env = make_env("Points24", seed=0)
    obs, info = env.reset()
    missing = next(str(n) for n in range(1, 11) if n not in info["state"]["numbers"])
    obs, reward, terminated, _, info = env.step(f"[action] {missing}")
    assert (reward, terminated, info["valid"], info["state"]["formula"]) == (-1.0, False, True, [])
    assert info["state"]["rejected"] == f"{missing} is not on your cards"
    rewards = [env.step("no idea")[1] for _ in range(3)]
    assert rewards == [-2.0, -2.0, -10.0]
    with pytest.raises(RuntimeError):
        env.step("[action] =")


@pytest.mark.parametrize(("task", "limit"), [("EZPoints", 10), ("Points24", 20)])
def test_wrapper_step_limit(task, limit):
    env = make_env(task, seed=0)
    env.reset()
    for step in range(1, limit + 1):
        _, _, terminated, truncated, _ = env.step("[action] +" if step % 3 else "bad")
        assert not terminated and truncated == (step == limit)


def test_wrapper_observation_image_and_success():
    env = make_env("EZPoints", seed=0)
    obs, info = env.reset()
    assert isinstance(obs["image"], Image.Image) and obs["image"].size == (300, 300) and obs["image"].mode == "RGB"
    assert obs["text"] in obs["prompt"] and "A counts 1; J, Q, K count 10." in obs["prompt"]
    rng = np.random.default_rng(0)
    done = False
    while not done:
        obs, reward, terminated, truncated, info = env.step(oracle_reply(env, rng))
        done = terminated or truncated
    assert reward == 10.0 and info["success"] and obs["text"].endswith("= 12. Solved.")


# ---------------------------------------------------------------- oracles


def _oracle_success(task: str, seeds: range) -> list[bool]:
    successes = []
    rng = np.random.default_rng(0)
    for seed in seeds:
        env = make_env(task)
        env.reset(seed=seed)
        done, info = False, {}
        while not done:
            _, _, terminated, truncated, info = env.step(oracle_reply(env, rng, OracleConfig(thought=True)))
            done = terminated or truncated
        successes.append(info["success"])
    return successes


@pytest.mark.parametrize("task", ["NumberLine", "EZPoints"])
def test_oracle_always_succeeds(task):
    assert all(_oracle_success(task, range(50)))


def test_points24_oracle_solves_exactly_the_solvable_deals():
    seeds = range(40)
    successes = _oracle_success("Points24", seeds)
    deals = [PointsEnv().reset(seed=s)[1]["numbers"] for s in seeds]
    assert successes == [solvable(tuple(sorted(d)), 24) for d in deals]
    assert 0 < sum(successes) < len(seeds)


def test_points24_oracle_on_unsolvable_deal_writes_the_closest_formula():
    env = points_at(gymnasium.make(POINTS24_ID).unwrapped, [1, 1, 1, 1])
    spec = get_task("Points24")
    decision = spec.oracle(env)
    assert "No formula makes 24" in decision.thought
    while not env.done:
        env.step(spec.oracle(env).action)
    assert env.reward == -1.0 and len(env.numbers_left()) == 0 and evaluate(env.formula) == 4


def test_points24_oracle_recovers_from_a_detour_or_gives_up():
    env = points_at(PointsEnv(), [3, 3, 8, 8])
    spec = get_task("Points24")
    write(env, "( (")  # not the oracle's plan, but still solvable
    while not env.done:
        env.step(spec.oracle(env).action)
    assert env.reward == 10.0
    env = points_at(PointsEnv(), [3, 3, 8, 8])
    write(env, "3 * 8")  # 24 but two cards left: no completion reaches 24
    decision = spec.oracle(env)
    assert env.tokens[decision.action] == "=" and "No formula from here" in decision.thought


def test_oracle_thoughts():
    env = blackjack_at(["10S", "6H"], ["10C", "7D"])
    decision = blackjack_oracle(env)
    assert decision.action == HIT and decision.thought.startswith("16 against the dealer's 10: hit expects")
    env = make_env("EZPoints", seed=0)
    env.reset()
    reply = oracle_reply(env, np.random.default_rng(0), OracleConfig(thought=True))
    assert reply.startswith("Thought: ") and "= 12, so write" in reply and "\n[action] " in reply


def test_corrupt_rate_one_gives_uniform_random_actions():
    env = make_env("EZPoints", seed=0)
    env.reset()
    rng = np.random.default_rng(0)
    oracle = get_task("EZPoints").oracle(env.unwrapped).action
    picks = Counter(
        env.parser(oracle_reply(env, rng, OracleConfig(corrupt_rate=1.0)), env.valid_actions) for _ in range(1300)
    )
    assert set(picks) == set(range(13))
    assert picks[oracle] < 200  # about 100 expected; an uncorrupted oracle would give 1300
    clean = {oracle_reply(env, rng, OracleConfig(corrupt_rate=0.0)) for _ in range(20)}
    assert clean == {f"[action] {env.valid_actions[oracle]}"}


@pytest.mark.slow
def test_blackjack_oracle_win_rate_matches_the_dp_value():
    exact = blackjack_outcomes()
    env = gymnasium.make(BLACKJACK_ID).unwrapped
    env.reset(seed=123)
    n, wins, total = 3000, 0, 0.0
    for _ in range(n):
        env.reset()
        reward = 0.0
        while not env.done:
            _, reward, *_ = env.step(blackjack_oracle(env).action)
        wins += reward == 1.0
        total += reward
    p = float(exact["win"])
    assert abs(wins / n - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert abs(total / n - float(exact["return"])) < 4 * 1.0 / math.sqrt(n)


# ---------------------------------------------------------------- limits


def test_limits():
    limits = task_limits()
    assert set(limits) == {"NumberLine", "EZPoints", "Points24", "Blackjack"}
    assert limits["NumberLine"] == limits["EZPoints"] == 1.0
    assert limits["Points24"] == pytest.approx(0.731, abs=5e-4)
    assert limits["Blackjack"] == pytest.approx(0.430, abs=1e-3)
    outcomes = blackjack_outcomes()
    assert outcomes["win"] + outcomes["draw"] + outcomes["loss"] == 1
    assert outcomes["return"] == pytest.approx(-0.0466, abs=1e-4)
    assert outcomes["win"] < blackjack_max_win_rate() < outcomes["win"] + Fraction(1, 200)
    assert ezpoints_raw_solvable_share() == Fraction(19, 169)
    assert points24_solvable_share(deck=True) == pytest.approx(0.746, abs=5e-4)


@pytest.mark.slow
def test_points24_limit_matches_the_env_sampling():
    env = PointsEnv()
    n = 3000
    env.reset(seed=99)
    hits = sum(solvable(tuple(sorted(env.reset()[1]["numbers"])), 24) for _ in range(n))
    p = float(points24_solvable_share())
    assert abs(hits / n - p) < 4 * math.sqrt(p * (1 - p) / n)
