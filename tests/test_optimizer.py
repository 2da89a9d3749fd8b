"""The policy optimiser: exact against brute force over the same policy space, and on hand-made matrices."""

import itertools
import math

import numpy as np
import pytest

from hylra_compile import Policy, allocate_top_k
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


def test_map_heads_takes_the_profiles_head_map_and_its_similarity():
    """With map_heads the DP maximises the mapped similarity (each consumer head's best producer head) and the
    policy carries the map: here head-mapped reuse of layer 0 beats equal-head reuse of layer 1."""
    L, H = 3, 2
    head_overlap = np.zeros((L, L, H, H))
    head_overlap[0, 1] = head_overlap[0, 2] = [[0.2, 0.9], [0.9, 0.2]]  # layer 0's heads swapped
    head_overlap[1, 2] = [[0.6, 0.1], [0.1, 0.6]]
    similarity = np.diagonal(head_overlap, axis1=2, axis2=3).mean(-1)
    prof = Profile(similarity, [0.1, 0.1, 0.1], head_overlap=head_overlap, metadata={"num_kv_heads": H})
    plain = optimize(prof, budget=2)
    assert plain.sources == [None, None, 1] and plain.heads == [None, None, None]
    mapped = optimize(prof, budget=2, map_heads=True)
    assert mapped.modes[0] == "producer" and 0 in mapped.sources
    assert all(h == [1, 0] for h, s in zip(mapped.heads, mapped.sources) if s == 0)
    assert mapped.provenance["map_heads"] is True and mapped.provenance["summed_similarity"] == pytest.approx(0.9)
    assert mapped.provenance["similarity"][0][2] == pytest.approx(0.9)
    every = optimize(prof, budget=1, map_heads=True)
    assert every.heads == [None, [1, 0], [1, 0]] and every.provenance["summed_similarity"] == pytest.approx(1.8)
    with pytest.raises(ValueError, match="map_heads=True needs a profile with a head map"):
        optimize(Profile(similarity, [0.1, 0.1, 0.1]), budget=2, map_heads=True)


def test_allocate_top_k_by_sensitivity_keeps_the_total():
    """Consumers keep min_blocks (1) and get the other blocks in proportion to their sensitivity, clipped to
    [f / spread, f * spread] (f = n - 1), n blocks each on average; producers and full layers get none."""
    prof = Profile(matrix(6, {}, default=0.5), [0.1, 0.05, 0.1, 0.2, 0.4, 0.0])
    policy = optimize(prof, budget=1)
    assert policy.modes == ["producer"] + ["consumer"] * 5
    allocated = allocate_top_k(policy, prof, top_k=256, block_size=32)  # n = 8 blocks
    blocks = [None if k is None else k // 32 for k in allocated.top_k]
    assert blocks[0] is None and sum(blocks[1:]) == 5 * 8
    assert blocks[5] == 1 + 2 and blocks[1] < blocks[2] < blocks[3] < blocks[4] <= 1 + 28  # the floor, then by need
    assert allocated.modes == policy.modes and allocated.sources == policy.sources
    assert allocated.provenance["top_k_allocation"]["blocks"] == {str(j): blocks[j] for j in range(1, 6)}
    uniform = allocate_top_k(policy, Profile(matrix(6, {}, default=0.5), [0.0] * 6), top_k=256,
                                           block_size=32)
    assert uniform.top_k == [None] + [256] * 5
    with pytest.raises(ValueError, match="no consumer layer"):
        allocate_top_k(Policy.full(6), prof, top_k=256, block_size=32)
    with pytest.raises(ValueError, match="spread must be a positive int"):
        allocate_top_k(policy, prof, top_k=256, block_size=32, spread=0)
    with pytest.raises(ValueError, match="the profile has 6 layers, the policy 3"):
        allocate_top_k(Policy.every(2, 3), prof, top_k=256, block_size=32)


def test_allocate_top_k_per_kv_head_keeps_the_total():
    """per_head: each (consumer, KV head) gets blocks in proportion to that head's sensitivity, n blocks each on
    average over all of them; the policy's top_k lists one budget per KV head; a profile without head sensitivities
    is refused."""
    heads = [[0.0, 0.0], [0.1, 0.3], [0.2, 0.2], [0.05, 0.15]]
    prof = Profile(matrix(4, {}, default=0.5), [0.0, 0.2, 0.2, 0.1], head_sensitivity=heads)
    policy = optimize(prof, budget=1)
    allocated = allocate_top_k(policy, prof, top_k=256, block_size=32, per_head=True)  # n = 8 blocks
    assert allocated.top_k[0] is None and allocated.num_kv_heads == 2
    blocks = [[k // 32 for k in allocated.top_k[layer]] for layer in (1, 2, 3)]
    assert sum(map(sum, blocks)) == 3 * 2 * 8
    # equal needs differ by the rounding's one block at most
    assert blocks[0][0] < blocks[0][1] and abs(blocks[1][0] - blocks[1][1]) <= 1 and blocks[2][0] < blocks[2][1]
    assert blocks[2][0] == 1 + 2  # the floor: min_blocks and a quarter of the free blocks
    assert allocated.provenance["top_k_allocation"]["blocks"] == {"1": blocks[0], "2": blocks[1], "3": blocks[2]}
    assert allocated.provenance["top_k_allocation"]["need"] == "sensitivity per KV head"
    floored = allocate_top_k(policy, prof, top_k=256, block_size=32, per_head=True, min_blocks=3)
    # the forced blocks and a quarter of the 5 free ones, at least
    assert min(k // 32 for layer in (1, 2, 3) for k in floored.top_k[layer]) == 3 + 2
    assert sum(k // 32 for layer in (1, 2, 3) for k in floored.top_k[layer]) == 3 * 2 * 8
    with pytest.raises(ValueError, match="min_blocks=9 is more than the 8 blocks of top_k=256"):
        allocate_top_k(policy, prof, top_k=256, block_size=32, min_blocks=9)
    with pytest.raises(ValueError, match="per_head=True needs a profile with head_sensitivity"):
        allocate_top_k(policy, Profile(matrix(4, {}, default=0.5), [0.0, 0.2, 0.2, 0.1]), top_k=256, block_size=32,
                       per_head=True)
    with pytest.raises(ValueError, match=r"head_sensitivity must have shape \(4, H\)"):
        Profile(matrix(4, {}, default=0.5), [0.0] * 4, head_sensitivity=[0.1] * 4)


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


# Before governed layers existed: on a profile of 8 layers, each optimised policy (modes, sources, summed similarity).
GOLDEN_PROFILE_SEED = 2026
GOLDEN = {
    ("budget", 1): ("Pccccccc", [None, 0, 0, 0, 0, 0, 0, 0], 3.705614702629827),
    ("budget", 2): ("FPcccccc", [None, None, 1, 1, 1, 1, 1, 1], 4.6164642166213286),
    ("budget", 3): ("FPccccFc", [None, None, 1, 1, 1, 1, None, 1], 4.101310520298977),
    ("budget", 4): ("FPccFcFc", [None, None, 1, 1, None, 1, None, 1], 3.465439716154325),
    ("budget", 5): ("FPccPFcF", [None, None, 1, 1, None, None, 4, None], 2.7872619597038906),
    ("budget", 6): ("FPccFFFF", [None, None, 1, 1, None, None, None, None], 1.8868123606996687),
    ("budget", 7): ("FPcFFFFF", [None, None, 1, None, None, None, None, None], 0.9669622001623905),
    ("budget", 8): ("FFFFFFFF", [None] * 8, 0.0),
    ("theta", 0.3): ("FPcccccc", [None, None, 1, 1, 1, 1, 1, 1], 4.6164642166213286),
    ("theta", 0.6): ("FPccccFc", [None, None, 1, 1, 1, 1, None, 1], 4.101310520298977),
    ("theta", 0.8): ("FPccPFcF", [None, None, 1, 1, None, None, 4, None], 2.7872619597038906),
}


def codes(policy: Policy) -> str:
    return "".join({"full": "F", "producer": "P", "consumer": "c"}[mode] for mode in policy.modes)


def test_a_profile_governing_every_layer_gives_the_policies_it_gave_before():
    """No sliding layer left as written: the same policies, bit for bit, and the provenance says every layer is
    governed."""
    rng = np.random.default_rng(GOLDEN_PROFILE_SEED)
    prof = Profile(np.triu(rng.uniform(0, 1, (8, 8)), 1), rng.uniform(0, 0.5, 8))
    assert prof.governed_layers == list(range(8))
    for (kind, value), (modes, sources, total) in GOLDEN.items():
        policy = (optimize(prof, budget=value) if kind == "budget"
                  else optimize(prof, theta=value, max_rnmse=0.4, keep_sensitive=1))
        assert (codes(policy), policy.sources, policy.provenance["summed_similarity"]) == (modes, sources, total)
        assert policy.provenance["governed_layers"] == list(range(8))
        assert policy.provenance["num_dense_layers"] == sum(mode != "c" for mode in modes)


def test_layers_not_governed_are_full_and_outside_the_budget():
    """A profile governing layers [1, 2, 4, 6] of 7 (the others slide within top_k): each policy is the optimum of
    the profile of those layers alone, mapped back to their numbers; the others are full and count in no budget."""
    rng = np.random.default_rng(5)
    governed = [1, 2, 4, 6]
    similarity, sensitivity = np.triu(rng.uniform(0, 1, (7, 7)), 1), rng.uniform(0, 0.5, 7)
    prof = Profile(similarity, sensitivity, metadata={"governed_layers": governed, "top_k": 24})
    alone = Profile(similarity[np.ix_(governed, governed)], sensitivity[governed])
    cases = [dict(budget=budget) for budget in (1, 2, 3, 4)] + [dict(budget=3, keep_sensitive=1), dict(theta=0.2),
                                                                dict(theta=0.3, max_rnmse=0.47)]
    for kwargs in cases:
        policy, expected = optimize(prof, **kwargs), optimize(alone, **kwargs)
        assert [policy.modes[layer] for layer in (0, 3, 5)] == ["full"] * 3
        assert [policy.modes[layer] for layer in governed] == expected.modes
        assert [policy.sources[layer] for layer in governed] == [
            None if source is None else governed[source] for source in expected.sources]
        assert policy.provenance["summed_similarity"] == expected.provenance["summed_similarity"]
        assert policy.provenance["governed_layers"] == governed
        assert policy.provenance["num_dense_layers"] == expected.provenance["num_dense_layers"]
    with pytest.raises(ValueError, match=r"budget must be an int in \[1, 4\] \(dense layers among the 4 layers the "
                                         r"policy governs, \[1, 2, 4, 6\]"):
        optimize(prof, budget=5)
    with pytest.warns(UserWarning, match=r"layer 1 \(first layer the policy governs\); layer 2 \(best similarity"):
        optimize(prof, theta=1.0)


@pytest.mark.parametrize("governed", [[], [2, 1], [1, 1], [3], [True], "0,1"])
def test_bad_governed_layers_are_refused(governed):
    with pytest.raises(ValueError, match=r"governed_layers must be a non-empty increasing list of layer indices in "
                                         r"0\.\.2"):
        Profile(matrix(3, {}, default=0.5), [0.1, 0.2, 0.1], metadata={"governed_layers": governed})
