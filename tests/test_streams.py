"""Score streams: registry, reproducibility, chunking, shapes and what each stream models."""

from __future__ import annotations

import numpy as np
import pytest

from alflb.errors import InvalidInputError, UnknownNameError
from alflb.streams import available_streams, make_stream, stream_from_dict
from alflb.traces import save_trace

SYNTHETIC = [name for name in available_streams() if name != "trace"]


@pytest.mark.parametrize("name", SYNTHETIC)
def test_seeded_reproducible_and_chunking_invariant(name):
    stream = make_stream(name)
    a = stream.sample(9, 16, 6, rng=3)
    assert a.shape == (9, 16, 6) and a.dtype == np.float32
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, stream.sample(9, 16, 6, rng=3))
    np.testing.assert_array_equal(a, stream.sample(9, 16, 6, rng=np.random.default_rng(3)))
    chunks = list(stream.iter_batches(9, 16, 6, rng=3, chunk_steps=4))
    assert [len(c) for c in chunks] == [4, 4, 1]
    np.testing.assert_array_equal(a, np.concatenate(chunks))
    # A prefix of a longer run is the shorter run.
    np.testing.assert_array_equal(a, stream.sample(20, 16, 6, rng=3)[:9])
    assert not np.array_equal(a, stream.sample(9, 16, 6, rng=4))


@pytest.mark.parametrize("activation", ["sigmoid", "softmax", "none"])
def test_activations(activation):
    a = make_stream("gaussian", activation=activation).sample(3, 50, 5, rng=0)
    if activation == "sigmoid":
        assert a.min() > 0 and a.max() < 1
    elif activation == "softmax":
        np.testing.assert_allclose(a.sum(axis=-1), 1.0, rtol=1e-5)
    else:
        assert a.min() < 0 < a.max()


def test_registry_errors_and_round_trip():
    with pytest.raises(UnknownNameError, match="unknown score stream 'nope'"):
        make_stream("nope")
    with pytest.raises(InvalidInputError, match="has no parameter 'bogus'"):
        make_stream("gaussian", bogus=1)
    with pytest.raises(InvalidInputError, match="activation must be one of"):
        make_stream("gaussian", activation="relu")
    with pytest.raises(InvalidInputError, match="sigma must be > 0"):
        make_stream("gaussian", sigma=0.0)
    with pytest.raises(InvalidInputError, match="n_experts must be an integer >= 2"):
        make_stream("gaussian").sample(2, 3, 1)
    s = make_stream("drifting", shift_every=10, zipf_s=1.0)
    assert stream_from_dict(s.as_dict()) == s


def test_skewed_zipf_popularity_follows_offsets():
    a = make_stream("skewed", zipf_s=1.0, activation="none").sample(20, 500, 6, rng=1)
    counts = np.bincount(a.reshape(-1, 6).argmax(axis=1), minlength=6)
    assert counts.max() > 4 * counts.min()  # rank 1 vs rank 6: e^{ln 6} offset gap


def test_clustered_tokens_concentrate_on_topic_experts():
    a = make_stream("clustered", n_topics=4, topic_scale=3.0, activation="none").sample(5, 400, 16, rng=2)
    winners = a.reshape(-1, 16).argmax(axis=1)
    # With 4 topics, a handful of experts win almost everything.
    top4 = np.sort(np.bincount(winners, minlength=16))[-4:].sum()
    assert top4 > 0.7 * len(winners)


def test_drifting_shift_permutes_popularity():
    s = make_stream("drifting", zipf_s=2.0, drift_amplitude=0.0, shift_every=50, activation="none")
    a = s.sample(100, 400, 8, rng=0)
    before = a[:50].mean(axis=(0, 1))
    after = a[50:].mean(axis=(0, 1))
    np.testing.assert_allclose(np.sort(before), np.sort(after), atol=0.05)  # same offsets ...
    assert np.argmax(before) != np.argmax(after) or np.argmin(before) != np.argmin(after)  # ... moved


def test_adversarial_flips_every_period():
    a = make_stream("adversarial", strength=2.0, period=5, activation="none").sample(20, 300, 4, rng=0)
    m = a.mean(axis=1)  # (N, E)
    fav = m[:, :2].mean(axis=1) > m[:, 2:].mean(axis=1)
    assert (fav[:5] == fav[0]).all() and (fav[5:10] == ~fav[0]).all()


def test_bursty_boosts_some_windows():
    s = make_stream("bursty", burst_prob=0.5, burst_len=4, burst_strength=5.0, activation="none")
    a = s.sample(40, 200, 6, rng=0)
    col_max = a.mean(axis=1).max(axis=1)  # (N,)
    assert (col_max > 1.0).any() and (col_max < 1.0).any()
    with pytest.raises(InvalidInputError, match="burst_experts must be < E"):
        make_stream("bursty", burst_experts=6).sample(2, 3, 6, rng=0)


def test_fixed_repeats_one_batch():
    a = make_stream("fixed").sample(5, 7, 3, rng=0)
    assert all(np.array_equal(a[0], a[n]) for n in range(5))


def test_trace_stream_replays_layer(tmp_path):
    scores = np.random.default_rng(0).random((6, 2, 5, 4)).astype(np.float32)
    path = save_trace(tmp_path / "t.npz", scores)
    s = make_stream("trace", path=str(path), layer=1)
    np.testing.assert_array_equal(s.sample(6, 5, 4), scores[:, 1])
    with pytest.raises(InvalidInputError, match="pass wrap=True"):
        s.sample(7, 5, 4)
    np.testing.assert_array_equal(
        make_stream("trace", path=str(path), layer=1, wrap=True).sample(8, 5, 4)[6:], scores[:2, 1]
    )
    with pytest.raises(InvalidInputError, match="T=5 tokens and E=4"):
        s.sample(2, 6, 4)
    with pytest.raises(InvalidInputError, match="layer 2 out of range"):
        make_stream("trace", path=str(path), layer=2).sample(2, 5, 4)


def test_step_offset_continues_the_same_stream():
    s = make_stream("skewed", zipf_s=1.0)
    full = s.sample(9, 8, 5, rng=3)
    np.testing.assert_array_equal(s.sample(5, 8, 5, rng=3, step_offset=4), full[4:])
    with pytest.raises(InvalidInputError, match="step_offset must be an integer >= 0"):
        s.sample(2, 8, 5, rng=3, step_offset=-1)
