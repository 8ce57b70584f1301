from __future__ import annotations

import numpy as np
import pytest

from agent.detection.combine import channel_names, combine_channels, sigmoid
from agent.models.stages import ensemble_mean


def test_max_over_channels_and_winner() -> None:
    logits = np.array([[0.0, 5.0, -1.0], [2.0, 1.0, -3.0], [1.0, 4.0, 3.0]], dtype=np.float32)
    both = combine_channels(logits, "mix_and_separated")
    np.testing.assert_array_equal(both.logits, [2.0, 5.0, 3.0])
    np.testing.assert_array_equal(both.winner, [1, 0, 2])
    mix = combine_channels(logits, "mix_only")
    np.testing.assert_array_equal(mix.logits, logits[0])
    assert not mix.winner.any()
    sep = combine_channels(logits, "separated_only")
    np.testing.assert_array_equal(sep.logits, [2.0, 4.0, 3.0])
    np.testing.assert_array_equal(sep.winner, [1, 2, 2])


def test_ties_go_to_the_mix() -> None:
    logits = np.array([[1.0, 1.0], [1.0, 0.5]], dtype=np.float32)
    assert combine_channels(logits, "mix_and_separated").winner.tolist() == [0, 0]


def test_mix_only_classes_ignore_separated_channels() -> None:
    logits = np.array([[-2.0, 0.0], [3.0, 1.0]], dtype=np.float32)
    out = combine_channels(logits, "separated_only", mix_only_classes=(0,))
    assert out.logits.tolist() == [-2.0, 1.0] and out.winner.tolist() == [0, 1]


def test_ensemble_mean_then_max_differs_from_max_then_mean() -> None:
    # Two members, two channels (mix, sep0), one class. The paper's code averages members
    # first, then takes the max over channels (ALGORITHMS.md §2.7 / §4.9).
    member = np.array([[[4.0], [0.0]], [[-4.0], [2.0]]], dtype=np.float32)  # (E=2, K=2, C=1)
    paper = combine_channels(ensemble_mean(member), "mix_and_separated")
    assert paper.logits.tolist() == [1.0] and paper.winner.tolist() == [1]
    max_first = np.max(member, axis=1).mean(axis=0)  # README order: max, then mean
    assert max_first.tolist() == [3.0]


def test_separated_modes_need_separated_channels() -> None:
    with pytest.raises(ValueError, match="needs separated channels"):
        combine_channels(np.zeros((1, 3), dtype=np.float32), "separated_only")


def test_channel_names_and_sigmoid() -> None:
    assert channel_names(4) == ["mix", "sep0", "sep1", "sep2", "sep3"]
    x = np.array([-800.0, -1.0, 0.0, 1.0, 800.0])
    np.testing.assert_allclose(sigmoid(x), [0.0, 0.26894142, 0.5, 0.73105858, 1.0], atol=1e-8)


def test_paper_max_policy_is_the_plain_max() -> None:
    from agent.detection.combine import PAPER_MAX

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 7)).astype(np.float32)
    a = combine_channels(logits, "mix_and_separated")
    b = combine_channels(logits, "mix_and_separated", policy=PAPER_MAX)
    np.testing.assert_array_equal(a.logits, logits.max(axis=0))
    np.testing.assert_array_equal(a.logits, b.logits)
    np.testing.assert_array_equal(a.winner, b.winner)


def test_blended_policy_gives_separated_channels_a_partial_say() -> None:
    from agent.detection.combine import CombinationPolicy

    policy = CombinationPolicy(weight=0.5, offset=-1.0)
    # class 0: mix 0, best separated 4 -> max(0, 0.5 * 0 + 0.5 * (4 - 1)) = 1.5, won by sep1
    # class 1: mix 2, separated 2.5 -> 0.5 * 2 + 0.5 * 1.5 = 1.75 < 2: the mix keeps it
    logits = np.array([[0.0, 2.0], [1.0, 2.5], [4.0, -3.0]], np.float32)
    c = combine_channels(logits, "mix_and_separated", policy=policy)
    np.testing.assert_allclose(c.logits, [1.5, 2.0])
    np.testing.assert_array_equal(c.winner, [2, 0])
    # mix-only classes still read the mix
    c = combine_channels(logits, "mix_and_separated", (0,), policy)
    assert c.logits[0] == 0.0 and c.winner[0] == 0


def test_remix_channels_and_the_gate() -> None:
    from agent.detection.combine import CombinationPolicy

    mix = np.array([1.0, -1.0, 0.5, 0.0], np.float32)
    sources = np.stack([mix * 0.9, mix * 0.1, mix * 0.0]).astype(np.float32)
    remix = CombinationPolicy(channels="remixes", gate_rms_ratio=0.05)
    ch = remix.channels_of(mix, sources)
    np.testing.assert_allclose(ch[0], mix)
    np.testing.assert_allclose(ch[1:], mix[None] - sources, atol=1e-7)
    # the silent third source (and so its remix, equal to the mix) is not classified
    np.testing.assert_array_equal(remix.active(mix, sources), [True, True, True, False])
    assert CombinationPolicy().active(mix, sources).all()  # no gate by default
    assert channel_names(3, "remixes") == ["mix", "mix-sep0", "mix-sep1", "mix-sep2"]
    with pytest.raises(ValueError, match="weight: must be in"):
        CombinationPolicy(weight=1.5)


def test_support_lets_separated_channels_lift_only_what_the_mix_half_hears() -> None:
    from agent.detection.combine import CombinationPolicy

    # class 0: mix -6, a separated channel 3 (a bird only the separator "hears"): kept at -6;
    # class 1: mix -1, separated 3: lifted to 3 (won by channel 1)
    logits = np.array([[-6.0, -1.0], [3.0, 3.0]], np.float32)
    c = combine_channels(logits, "mix_and_separated", policy=CombinationPolicy(min_mix_logit=-2))
    np.testing.assert_allclose(c.logits, [-6.0, 3.0])
    np.testing.assert_array_equal(c.winner, [0, 1])
    assert not CombinationPolicy(min_mix_logit=-2).is_paper_max
    with pytest.raises(ValueError, match="min_mix_logit"):
        CombinationPolicy(min_mix_logit=float("nan"))
