"""The paper's augmentations: each op's ranges and probabilities, label union and masking.

Statistical checks use fixed seeds and enough samples that the tolerances are many standard
errors wide (e.g. n = 4000 Bernoulli(0.5): sd 0.008, tolerance 0.03).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from modeltools.augment import (
    AugmentConfig,
    Example,
    add_noise,
    apply_mel_lowpass,
    augment_classifier_example,
    lowpass_envelope,
    make_mom,
    mix,
    noise_only,
    peak_normalize,
    random_crop,
    random_lowpass_envelope,
    scale_to_peak,
    union_labels,
)

N_STAT = 4000


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_random_crop_is_uniform_over_all_offsets_of_a_6s_example() -> None:
    sr = 22050
    x = np.arange(6 * sr, dtype=np.float32)
    r = rng(1)
    starts = []
    for _ in range(N_STAT):
        crop, start = random_crop(x, 5 * sr, r)
        assert crop.shape == (5 * sr,)
        assert crop[0] == start and crop[-1] == start + 5 * sr - 1  # really that slice
        starts.append(start)
    s = np.array(starts)
    assert s.min() >= 0 and s.max() <= sr
    assert stats.kstest(s / sr, "uniform").pvalue > 0.01
    assert abs(s.mean() / sr - 0.5) < 0.03


def test_random_crop_pads_short_inputs_at_a_random_offset() -> None:
    x = np.ones(100, dtype=np.float32)
    offsets = set()
    for i in range(200):
        crop, start = random_crop(x, 150, rng(i))
        assert crop.shape == (150,) and crop.sum() == 100 and start <= 0
        assert np.all(crop[-start : -start + 100] == 1)
        offsets.add(start)
    assert len(offsets) > 30  # not always the same place


def test_peak_normalize_draws_levels_uniformly_in_005_075() -> None:
    r = rng(2)
    x = np.sin(np.linspace(0, 50, 1000)).astype(np.float32) * 3.0
    levels = []
    for _ in range(N_STAT):
        y, level = peak_normalize(x, r)
        assert np.isclose(np.max(np.abs(y)), level, rtol=1e-6)
        levels.append(level)
    v = np.array(levels)
    assert v.min() >= 0.05 and v.max() <= 0.75
    assert stats.kstest((v - 0.05) / 0.7, "uniform").pvalue > 0.01
    # silence stays silence
    assert not np.any(scale_to_peak(np.zeros(10), 0.5))


def _ex(audio: np.ndarray, species: list[float], masks: list[float]) -> Example:
    return Example(
        audio.astype(np.float32),
        {"species": np.array(species, np.float32), "genus": np.array(species[:2], np.float32)},
        {"species": np.array(masks, np.float32), "genus": np.ones(2, np.float32)},
    )


def test_mixing_sums_audio_and_unions_labels_and_masks() -> None:
    a = _ex(np.ones(4), [0, 1, 0, 0], [1, 1, 0, 1])  # class 2 is a listed background of a
    b = _ex(np.full(4, 2.0), [0, 0, 1, 0], [1, 1, 1, 0])  # class 3 masked in b; class 2 primary
    m = mix(a, b)
    assert m.audio.tolist() == [3.0] * 4
    assert m.labels["species"].tolist() == [0, 1, 1, 0]
    # Class 2: masked in a, but positive in the union -> counts. Class 3: masked in b, not
    # positive anywhere -> stays masked. Class 0: counts in both.
    assert m.masks["species"].tolist() == [1, 1, 1, 0]
    labels, masks = union_labels(b, a)  # symmetric
    assert labels["species"].tolist() == [0, 1, 1, 0] and masks["species"].tolist() == [1, 1, 1, 0]


@pytest.mark.parametrize("snr_db", [0.0, 7.5, 40.0])
def test_noise_is_added_at_exactly_the_requested_snr(snr_db: float) -> None:
    r = rng(3)
    signal = r.standard_normal(20000).astype(np.float32) * 0.1
    noise = r.standard_normal(20000).astype(np.float32) * 3.0
    y = add_noise(signal, noise, snr_db)
    added = y.astype(np.float64) - signal
    measured = 10 * np.log10(np.mean(signal.astype(np.float64) ** 2) / np.mean(added**2))
    assert measured == pytest.approx(snr_db, abs=1e-3)
    assert np.array_equal(add_noise(np.zeros(5), noise[:5], 10.0), np.zeros(5))
    assert np.array_equal(add_noise(signal[:5], np.zeros(5), 10.0), signal[:5])


def test_noise_only_clears_labels_and_counts_every_class() -> None:
    ex = noise_only(np.ones(8), {"species": 5, "order": 2})
    assert ex.labels["species"].sum() == 0 and ex.labels["order"].sum() == 0
    assert ex.masks["species"].tolist() == [1] * 5 and ex.masks["order"].tolist() == [1, 1]


def test_lowpass_envelope_matches_the_paper_formula() -> None:
    a, b = 5.0, 1.5
    env = lowpass_envelope(a, b, 160)
    u = np.arange(160) / 159.0
    expected = 1.0 - 0.5 * (np.tanh(a * (u - 0.5) - b) + 1.0)
    np.testing.assert_allclose(env, expected, rtol=1e-6)
    assert np.all(np.diff(env) <= 0)  # a low-pass: never rises with frequency


def test_random_lowpass_draws_slope_and_offset_in_range_with_probability() -> None:
    r = rng(4)
    applied, slopes, offsets = 0, [], []
    u = np.linspace(0, 1, 160)
    for _ in range(N_STAT):
        env, on = random_lowpass_envelope(r, 160, probability=0.3)
        if not on:
            assert np.all(env == 1.0)
            continue
        applied += 1
        # Invert the formula at two channels: t_c = atanh(1 - 2 env_c) = a (u_c - 0.5) - b.
        t = np.arctanh(np.clip(1 - 2 * env.astype(np.float64), -1 + 1e-12, 1 - 1e-12))
        i, j = 40, 120
        a = (t[j] - t[i]) / (u[j] - u[i])
        slopes.append(a)
        offsets.append(a * (u[i] - 0.5) - t[i])
    assert abs(applied / N_STAT - 0.3) < 0.03
    s, o = np.array(slopes), np.array(offsets)
    assert s.min() > 2 - 1e-3 and s.max() < 8 + 1e-3 and abs(s.mean() - 5) < 0.15
    assert o.min() > -1e-3 and o.max() < 5 + 1e-3 and abs(o.mean() - 2.5) < 0.15


def test_apply_mel_lowpass_scales_every_frame_per_channel() -> None:
    mel = np.ones((2, 7, 160), np.float32)
    env = np.stack([lowpass_envelope(3, 0), np.ones(160, np.float32)])
    out = apply_mel_lowpass(mel, env)
    assert out.shape == mel.shape
    np.testing.assert_allclose(out[0, 3], env[0])
    np.testing.assert_allclose(out[1], 1.0)


def test_mom_is_the_sum_of_the_two_mixtures() -> None:
    m1, m2 = rng(5).standard_normal((2, 100)).astype(np.float32)
    mom, refs = make_mom(m1, m2)
    np.testing.assert_allclose(mom, m1 + m2)
    assert refs.shape == (2, 100) and np.array_equal(refs[0], m1)
    with pytest.raises(ValueError):
        make_mom(m1, m2[:50])


# ---------------------------------------------------------------------------------------------
# The composed classifier policy


def _policy_run(cfg: AugmentConfig, n: int, seed: int = 6):
    """Run the policy n times with cheap sources that record what they handed out."""
    heads = {"species": 8}
    length = int(6 * cfg.sample_rate_hz)
    drawn: list[list[int]] = []

    def draw(r: np.random.Generator) -> Example:
        k = int(r.integers(1, 8))
        drawn[-1].append(k)
        lab = np.zeros(8, np.float32)
        lab[k] = 1
        tone = np.sin(np.arange(length) * 0.3 * k).astype(np.float32) * r.uniform(0.1, 2)
        return Example(tone, {"species": lab}, {"species": np.ones(8, np.float32)})

    def draw_noise(r: np.random.Generator, m: int) -> np.ndarray:
        return r.standard_normal(m).astype(np.float32)

    r = rng(seed)
    out = []
    for _ in range(n):
        drawn.append([])
        ex, env, info = augment_classifier_example(r, draw, draw_noise, heads, cfg)
        out.append((ex, env, info, drawn[-1]))
    return out


def test_policy_probabilities_ranges_and_labels() -> None:
    cfg = AugmentConfig(sample_rate_hz=2000)  # small examples; the policy is rate-agnostic
    runs = _policy_run(cfg, N_STAT)
    infos = [i for _, _, i, _ in runs]
    noise_only_frac = np.mean([i["noise_only"] for i in infos])
    assert abs(noise_only_frac - 0.10) < 0.02
    rest = [r for r in runs if not r[2]["noise_only"]]
    assert abs(np.mean([i["mixed"] for _, _, i, _ in rest]) - 0.5) < 0.03
    assert abs(np.mean([i["noisy"] for _, _, i, _ in rest]) - 0.75) < 0.03
    snrs = np.array([i["snr_db"] for _, _, i, _ in rest if i["noisy"]])
    assert snrs.min() >= 0 and snrs.max() <= 40
    assert stats.kstest(snrs / 40, "uniform").pvalue > 0.01
    assert abs(np.mean([i["lowpass"] for i in infos]) - 0.5) < 0.03
    for ex, env, info, drawn in runs:
        assert ex.audio.shape == (cfg.example_samples,)
        assert 0.05 <= info["peak"] <= 0.75
        assert np.isclose(np.max(np.abs(ex.audio)), info["peak"], rtol=1e-5)
        if info["noise_only"]:
            assert drawn == [] and ex.labels["species"].sum() == 0
            assert np.all(ex.masks["species"] == 1)
        else:
            expected = np.zeros(8)
            expected[drawn] = 1
            assert len(drawn) == (2 if info["mixed"] else 1)
            assert ex.labels["species"].tolist() == expected.tolist()  # the label union
        if not info["lowpass"]:
            assert np.all(env == 1.0)


def test_policy_without_augmentation_only_crops_and_normalises() -> None:
    cfg = AugmentConfig(sample_rate_hz=2000).without_augmentation()
    for _, env, info, drawn in _policy_run(cfg, 200):
        assert not (info["noise_only"] or info["mixed"] or info["noisy"] or info["lowpass"])
        assert len(drawn) == 1 and np.all(env == 1.0)


def test_policy_is_deterministic_given_the_generator() -> None:
    cfg = AugmentConfig(sample_rate_hz=2000)
    a = _policy_run(cfg, 50, seed=9)
    b = _policy_run(cfg, 50, seed=9)
    c = _policy_run(cfg, 50, seed=10)
    assert all(np.array_equal(x[0].audio, y[0].audio) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x[0].audio, y[0].audio) for x, y in zip(a, c, strict=True))
