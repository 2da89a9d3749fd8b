"""The policy optimiser: exact against brute force over the same policy space, and on hand-made matrices."""

import itertools
import math

import numpy as np
import pytest

from hylra_compile import Policy
from hylra_compile.optimizer import optimize
from hylra_compile.profiler import Profile


def objective(policy: Policy, similarity: np.ndarray) -> tuple[int, float]:
    """(dense layers, summed similarity of the consumers to their sources)."""
    dense = sum(mode != "consumer" for mode in policy.modes)
    total = sum(similarity[s, j] for j, s in enumerate(policy.sources) if s is not None)
    return dense, total


def brute_force(similarity, sensitivity, theta, max_rnmse, budget):
    """Best (dense layers, summed similarity) over every mode assignment of the optimiser's policy space."""
    num_layers = similarity.shape[0]
    forced = [j == 0 or (max_rnmse is not None and sensitivity[j] > max_rnmse) for j in range(num_layers)]
    best = None
    for modes in itertools.product(("full", "producer", "consumer"), repeat=num_layers):
        nearest, total, ok = None, 0.0, True
        for j, mode in enumerate(modes):
            if mode == "consumer":
                if forced[j] or nearest is None or (budget is None and similarity[nearest, j] < theta):
                    ok = False
                    break
                total += similarity[nearest, j]
            elif mode == "producer":
                nearest = j
        dense = sum(mode != "consumer" for mode in modes)
        if not ok or (budget is not None and dense != budget):
            continue
        key = (dense, -total)
        if best is None or key < best:
            best = key
    return best[0], -best[1]


def random_profile(rng, num_layers):
    similarity = np.triu(rng.uniform(0, 1, (num_layers, num_layers)), 1)
    return Profile(similarity, rng.uniform(0, 0.5, num_layers))


@pytest.mark.filterwarnings("ignore:theta=.* admits no reuse")  # random thresholds may be infeasible
@pytest.mark.parametrize("num_layers", [1, 2, 3, 5, 7, 9, 12])
def test_threshold_mode_matches_brute_force(num_layers):
    rng = np.random.default_rng(num_layers)
    cases = 1 if num_layers == 12 else 4
    for case in range(cases):
        prof = random_profile(rng, num_layers)
        theta = float(rng.choice([0.0, 0.3, 0.5, 0.7, 0.9]))
        max_rnmse = [None, 0.4][case % 2]
        policy = optimize(prof, theta=theta, max_rnmse=max_rnmse)
        dense, total = objective(policy, prof.similarity)
        expected_dense, expected_total = brute_force(prof.similarity, prof.sensitivity, theta, max_rnmse, None)
        assert dense == expected_dense
        assert math.isclose(total, expected_total, abs_tol=1e-9)
        assert math.isclose(policy.provenance["summed_similarity"], total, abs_tol=1e-9)
        for j, source in enumerate(policy.sources):
            if source is not None:
                assert prof.similarity[source, j] >= theta
                assert max_rnmse is None or prof.sensitivity[j] <= max_rnmse
        for layer, mode in enumerate(policy.modes):
            assert mode != "producer" or layer in policy.sources, "an unconsumed producer must be full"


@pytest.mark.parametrize("num_layers", [2, 4, 6, 9, 12])
def test_budget_mode_matches_brute_force(num_layers):
    rng = np.random.default_rng(100 + num_layers)
    prof = random_profile(rng, num_layers)
    for budget in sorted({1, 2, num_layers // 2, num_layers}):
        policy = optimize(prof, budget=budget)
        dense, total = objective(policy, prof.similarity)
        assert dense == budget
        _, expected_total = brute_force(prof.similarity, prof.sensitivity, None, None, budget)
        assert math.isclose(total, expected_total, abs_tol=1e-9)


def matrix(num_layers, entries, default=0.0):
    similarity = np.zeros((num_layers, num_layers))
    similarity[np.triu_indices(num_layers, 1)] = default
    for (i, j), value in entries.items():
        similarity[i, j] = value
    return similarity


def test_dissimilar_layer_opens_a_new_segment():
    similarity = matrix(6, {(0, 1): 0.9, (0, 2): 0.9, (0, 3): 0.9, (4, 5): 0.8}, default=0.1)
    policy = optimize(Profile(similarity, np.zeros(6)), theta=0.5)
    assert policy.modes == ["producer", "consumer", "consumer", "consumer", "producer", "consumer"]
    assert policy.sources == [None, 0, 0, 0, None, 4]


def test_sensitive_layer_runs_full_inside_a_segment():
    sensitivity = np.array([0.1, 0.1, 0.9, 0.1, 0.1])
    policy = optimize(Profile(matrix(5, {}, default=0.9), sensitivity), theta=0.5, max_rnmse=0.5)
    assert policy.modes == ["producer", "consumer", "full", "consumer", "consumer"]
    assert policy.sources == [None, 0, None, 0, 0]


def test_equal_dense_count_prefers_larger_summed_similarity():
    # Two dense layers are needed (layer 3 cannot reuse layer 0). P c P c sums 0.6 + 0.95 = 1.55; F P c c sums
    # 0.9 + 0.9 = 1.8 and wins; the unconsumed layer 0 is written as full.
    similarity = matrix(4, {(0, 1): 0.6, (0, 2): 0.6, (0, 3): 0.2, (1, 2): 0.9, (1, 3): 0.9, (2, 3): 0.95})
    policy = optimize(Profile(similarity, np.zeros(4)), theta=0.5)
    assert policy.modes == ["full", "producer", "consumer", "consumer"]
    assert policy.provenance["summed_similarity"] == pytest.approx(1.8)


def test_theta_zero_reuses_layer_zero_everywhere():
    policy = optimize(Profile(matrix(4, {}, default=0.0), np.zeros(4)), theta=0.0)
    assert policy.modes == ["producer", "consumer", "consumer", "consumer"]


def test_infeasible_theta_runs_everything_full_and_says_why():
    sensitivity = np.array([0.0, 0.0, 0.7])
    with pytest.warns(UserWarning, match=r"admits no reuse") as caught:
        policy = optimize(Profile(matrix(3, {}, default=0.5), sensitivity), theta=0.99, max_rnmse=0.5)
    assert policy == Policy.from_modes(["full"] * 3, provenance=policy.provenance)
    message = str(caught[0].message)
    assert "layer 0 (first layer)" in message
    assert "layer 1 (best similarity 0.5 with layer 0 < theta)" in message
    assert "layer 2 (sensitivity 0.7: kept dense as sensitive)" in message


def test_budget_places_the_second_anchor_where_similarity_is_largest():
    similarity = matrix(4, {(0, 1): 0.9, (2, 3): 0.9}, default=0.1)
    policy = optimize(Profile(similarity, np.zeros(4)), budget=2, theta=0.99)  # theta is ignored
    assert policy.modes == ["producer", "consumer", "producer", "consumer"]
    assert optimize(Profile(similarity, np.zeros(4)), budget=4).modes == ["full"] * 4


def test_provenance_and_model_identity_survive_save_and_load(tmp_path):
    prof = Profile(matrix(3, {}, default=0.8), [0.1, 0.2, 0.3],
                   metadata={"top_k": 64, "block_size": 16, "calibration": "unit test", "num_kv_heads": 2})
    policy = optimize(prof, theta=0.5, max_rnmse=0.25)
    policy.save(tmp_path / "policy.json")
    loaded = Policy.load(tmp_path / "policy.json")
    assert loaded == policy
    assert loaded.num_kv_heads == 2 and loaded.num_layers == 3
    assert loaded.modes == ["producer", "consumer", "full"]
    provenance = loaded.provenance
    assert provenance["theta"] == 0.5 and provenance["max_rnmse"] == 0.25
    assert provenance["top_k"] == 64 and provenance["block_size"] == 16 and provenance["calibration"] == "unit test"
    assert provenance["similarity"] == prof.similarity.tolist()
    assert provenance["sensitivity"] == [0.1, 0.2, 0.3]
    with pytest.raises(ValueError, match="KV heads"):
        loaded.check_model(3, 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"theta": 1.5}, r"theta must be a number in \[0, 1\]"),
        ({"theta": -0.1}, r"theta must be a number in \[0, 1\]"),
        ({}, "needs theta"),
        ({"budget": 0}, r"budget must be an int in \[1, 3\]"),
        ({"budget": 4}, r"budget must be an int in \[1, 3\]"),
        ({"budget": 1, "max_rnmse": 0.15}, "fewer than the 2 that must run dense"),
        ({"theta": 0.5, "max_rnmse": -1}, "max_rnmse must be"),
        ({"theta": 0.5, "keep_sensitive": 4}, r"keep_sensitive must be an int in \[0, 3\]"),
        ({"budget": 1, "keep_sensitive": 1}, r"fewer than the 2 that must run dense \(layer 0 and the sensitive layers: \[0, 1\]\)"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        optimize(Profile(matrix(3, {}, default=0.5), [0.1, 0.2, 0.1]), **kwargs)


def test_keep_sensitive_runs_the_most_sensitive_layers_dense():
    prof = Profile(matrix(5, {}, default=0.9), [0.1, 0.3, 0.05, 0.4, 0.2])
    policy = optimize(prof, budget=3, keep_sensitive=2)
    assert policy.modes == ["producer", "full", "consumer", "full", "consumer"]
    assert policy.provenance["keep_sensitive"] == 2
    by_count, by_level = optimize(prof, theta=0.5, keep_sensitive=2), optimize(prof, theta=0.5, max_rnmse=0.25)
    assert (by_count.modes, by_count.sources) == (by_level.modes, by_level.sources)


def test_baseline_policies_stay_available():
    assert Policy.every(2, 4).modes == ["producer", "consumer", "producer", "consumer"]
    assert Policy.full(3).modes == ["full"] * 3
