"""The optional widening of the synthetic families: treated share, binary covariates, heavy tails,
assignment strength; the defaults reproduce the draws made before the options existed."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import kurtosis

from cina_ext.data import ERSCM, make_er_dataset, make_setoguchi, sample_datasets


def test_defaults_reproduce_the_old_draws():
    # values of the generators before the options were added
    ds = make_er_dataset(50, 5, seed=0)
    assert ds.ate == pytest.approx(0.790328552611593, abs=1e-12) and ds.n_treated == 21
    np.testing.assert_allclose(ds.Y[:3], [1.302865127343681, -0.7868586975692474, 0.917388703170827], atol=1e-12)
    explicit = make_er_dataset(
        50, 5, seed=0, treated_share=None, binary_share=0.0, assignment_strength=1.0, propensity_clip=0.05
    )
    np.testing.assert_array_equal(explicit.Y, ds.Y)
    seto = make_setoguchi(60, "C", seed=2, varying=True)
    assert seto.ate == pytest.approx(-0.10166469554706062, abs=1e-12) and seto.n_treated == 34
    np.testing.assert_allclose(seto.Y[:3], [-4.701198149510384, -3.6928457255602094, -5.849782951941275], atol=1e-12)


@pytest.mark.parametrize("share", [0.08, 0.3, 0.55])
def test_er_treated_share_sets_the_mean_propensity(share):
    for seed in range(3):
        ds = make_er_dataset(6000, 12, seed=seed, treated_share=share, propensity_clip=0.01)
        assert ds.propensity.mean() == pytest.approx(share, abs=0.02)
        assert ds.T.mean() == pytest.approx(share, abs=0.03)
        assert ds.meta["scm"]["treated_share"] == share
    base = ERSCM(8, seed=5)
    moved = ERSCM(8, seed=5, treated_share=0.1)
    assert moved.t_intercept != base.t_intercept and moved.t_scale == base.t_scale  # only c changes
    assert moved.adjacency()[1].tolist() == base.adjacency()[1].tolist()


def test_setoguchi_treated_share_solves_the_intercept():
    for share in (0.05, 0.4):
        ds = make_setoguchi(500, "G", seed=1, varying=True, treated_share=share)
        assert ds.propensity.mean() == pytest.approx(share, abs=1e-6)
        assert ds.meta["treated_share"] == share
    with pytest.raises(ValueError, match="treated_share"):
        make_setoguchi(50, seed=0, treated_share=1.0)


def test_er_binary_share_dichotomises_covariate_nodes():
    ds = make_er_dataset(400, 10, seed=3, binary_share=0.5)
    binary = [j for j in range(10) if set(np.unique(ds.X[:, j])) <= {0.0, 1.0}]
    assert len(binary) == 5
    assert sorted(ds.meta["scm"]["binary_nodes"]) == sorted(ds.feature_names[j] for j in binary)
    plain = make_er_dataset(400, 10, seed=3)
    assert not any(set(np.unique(plain.X[:, j])) <= {0.0, 1.0} for j in range(10))
    np.testing.assert_allclose(ds.ite, ds.mu1 - ds.mu0)
    assert ds.meta["scm"]["binary_nodes"] and plain.meta["scm"]["binary_nodes"] == []


def test_er_student_t_noise_has_heavy_tails():
    heavy = make_er_dataset(20000, 6, seed=1, noise_dist="student_t", density=0.0)
    light = make_er_dataset(20000, 6, seed=1, density=0.0)
    # with no edges the covariates are the unit-variance noise itself
    assert np.all(np.abs(heavy.X.std(axis=0) - 1.0) < 0.2)
    assert kurtosis(heavy.X, axis=0).min() > 3.0 and np.abs(kurtosis(light.X, axis=0)).max() < 0.3
    assert heavy.meta["scm"]["noise_dist"] == "student_t"


def test_er_assignment_strength_and_clip():
    base, strong = ERSCM(10, seed=4), ERSCM(10, seed=4, assignment_strength=3.0)
    assert strong.t_scale == pytest.approx(3.0 * base.t_scale)
    ds = make_er_dataset(3000, 10, seed=4, assignment_strength=3.0, propensity_clip=0.0)
    weak = make_er_dataset(3000, 10, seed=4)
    extreme = np.mean((ds.propensity < 0.05) | (ds.propensity > 0.95))
    assert extreme > 0.1 and weak.propensity.min() >= 0.05 and weak.propensity.max() <= 0.95
    for bad in (
        dict(treated_share=0.0),
        dict(binary_share=1.5),
        dict(assignment_strength=0.0),
        dict(propensity_clip=0.5),
        dict(noise_dist="cauchy"),
    ):
        with pytest.raises(ValueError):
            ERSCM(5, seed=0, **bad)


def test_sample_datasets_draws_the_option_ranges():
    sets = list(
        sample_datasets(
            "er",
            12,
            (200, 300),
            seed=2,
            d=(2, 40),
            treated_share=(0.05, 0.6),
            binary_share=(0.0, 0.5),
            noise_dist=["gaussian", "student_t"],
        )
    )
    shares = [ds.meta["scm"]["treated_share"] for ds in sets]
    assert all(0.05 <= s <= 0.6 for s in shares) and len(set(shares)) == 12
    assert {ds.meta["scm"]["noise_dist"] for ds in sets} == {"gaussian", "student_t"}
    assert len({ds.d for ds in sets}) > 5


def test_geometric_ints_span_the_range_in_even_ratios_and_check_their_arguments():
    from cina_ext.data import geometric_ints

    vals = geometric_ints(2, 256, 8)
    assert vals == sorted(set(vals)) and vals[0] == 2 and vals[-1] == 256
    np.testing.assert_allclose(np.array(vals[1:]) / np.array(vals[:-1]), 2.0)
    assert geometric_ints(5, 5, 1) == [5] and geometric_ints(2, 3, 10) == [2, 3]  # rounding merges
    for bad in ((0, 4, 3), (5, 4, 3), (2, 9, 1)):
        with pytest.raises(ValueError, match="geometric_ints"):
            geometric_ints(*bad)
