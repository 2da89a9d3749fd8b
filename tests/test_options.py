import warnings

import pytest

from hylra_compile import HylraOptions, Policy
from hylra_compile.options import DENSE_BLOCK, SELECTIONS


def test_defaults():
    """The measured best (blocks of 16 refined inside producers' blocks of 64; 64 sink and 128 local tokens)."""
    opts = HylraOptions.parse({})
    assert (opts.top_k, opts.block_size, opts.sink_blocks, opts.local_blocks) == (2048, 16, 4, 8)
    assert (opts.selection, opts.producer_block_size, opts.expansion, opts.prefilter) == ("refine", 64, 4, 0)
    assert opts.min_seq_len == 4096 and opts.inductor is True and opts.policy is None
    assert opts.n_select == 128
    assert opts.producer_settings() == dict(block_size=64, n_select=128, sink_blocks=1, local_blocks=2)


@pytest.mark.parametrize("given, blocks", [
    ({"block_size": 64}, (1, 2, 64)),
    ({"block_size": 32}, (2, 4, 64)),
    ({"block_size": 128}, (1, 1, 128)),  # no finer producers than consumers
    ({"block_size": 48}, (2, 3, 48)),  # 64 is no multiple of 48
    ({"block_size": 16, "selection": "reuse"}, (4, 8, 16)),  # reuse reads the producers' own blocks
    ({"block_size": 16, "sink_blocks": 0, "producer_block_size": 16}, (0, 8, 16)),
])
def test_left_out_options_keep_their_tokens_at_any_block_size(given, blocks):
    opts = HylraOptions(**given)
    assert (opts.sink_blocks, opts.local_blocks, opts.producer_block_size) == blocks


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown hylra option\(s\) \['topk'\]; valid options are \['policy', 'top_k'"):
        HylraOptions.parse({"topk": 5})


@pytest.mark.parametrize(
    "options,message",
    [
        ({"top_k": 0}, "top_k must be a positive int"),
        ({"block_size": 1.5}, "block_size must be a positive int"),
        ({"sink_blocks": -1}, "sink_blocks must be an int >= 0"),
        ({"top_k": 64, "block_size": 64}, "fewer than sink_blocks \\+ local_blocks = 3"),
        ({"inductor": "yes"}, "inductor must be True or False"),
        ({"cudagraphs": 1}, "cudagraphs must be True or False"),
        ({"cudagraphs": True, "inductor": False}, "cudagraphs=True needs inductor=True"),
        ({"policy": 3}, "policy must be a Policy, a path to a policy JSON or a list of modes"),
        ({"policy": ["producer", "sparse"]}, "unknown mode 'sparse'"),
    ],
)
def test_bad_values(options, message):
    with pytest.raises(ValueError, match=message):
        HylraOptions.parse(options)


def test_policy_forms(tmp_path, monkeypatch):
    assert HylraOptions.parse({"policy": ["producer", "consumer"]}).policy.sources == [None, 0]
    Policy.every(2, 4).save(tmp_path / "p.json")
    assert HylraOptions.parse({"policy": str(tmp_path / "p.json")}).policy == Policy.every(2, 4)
    monkeypatch.setenv("HYLRA_DUMP_DIR", str(tmp_path / "dumps"))
    assert HylraOptions.parse({}).dump_dir == str(tmp_path / "dumps")
    assert HylraOptions.parse({"dump_dir": "x"}).dump_dir == "x"


def test_direct_construction_is_validated_too():
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        HylraOptions(top_k=0)
    with pytest.raises(ValueError, match="policy must be a Policy here"):
        HylraOptions(policy=["producer"])


def test_selection_defaults_and_settings():
    """selection defaults to refine with 4 candidates; only refine widens the producer's selection, by candidates;
    a consumer's own selection (refine_blocks, oracle's topk_attention) always takes top_k."""
    opts = HylraOptions(top_k=256, block_size=64)
    assert (opts.selection, opts.candidates) == ("refine", 4) and SELECTIONS == ("reuse", "refine", "oracle")
    own = dict(block_size=64, n_select=4, sink_blocks=1, local_blocks=2)
    assert opts.selection_settings() == own and opts.producer_settings() == {**own, "n_select": 16}
    for selection, candidates, producer_blocks in [("refine", 4, 16), ("refine", 3, 12), ("refine", 1, 4),
                                                   ("oracle", 4, 4), ("reuse", 4, 4)]:
        opts = HylraOptions.parse({"top_k": 256, "block_size": 64, "selection": selection, "candidates": candidates})
        assert opts.selection_settings() == own
        assert opts.producer_settings() == {**own, "n_select": producer_blocks}
        assert opts.consumer_settings() == dict(block_size=64, min_seq_len=4096)


def test_a_selection_is_capped_at_the_key_blocks_there_are():
    """With the KV blocks known, no selection exceeds them (the refine producer's widened one neither), and none
    falls below the forced sink + local blocks; without them (a symbolic KV length) top_k decides alone."""
    opts = HylraOptions(top_k=10**12, block_size=64, selection="refine", candidates=4)
    assert opts.selection_settings(key_blocks=5)["n_select"] == opts.producer_settings(key_blocks=5)["n_select"] == 5
    assert opts.selection_settings(key_blocks=2)["n_select"] == 3  # sink_blocks 1 + local_blocks 2
    assert opts.producer_settings()["n_select"] == 4 * opts.n_select
    opts = HylraOptions(top_k=256, block_size=64, selection="refine", candidates=4)
    assert (opts.selection_settings(key_blocks=8)["n_select"], opts.producer_settings(key_blocks=8)["n_select"]) == (
        4, 8)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"selection": "reus"}, r"selection must be one of \['reuse', 'refine', 'oracle'\], got 'reus'"),
        ({"selection": None}, r"selection must be one of \['reuse', 'refine', 'oracle'\], got None"),
        ({"selection": "refine", "candidates": 0}, "candidates must be a positive int, got 0"),
        ({"selection": "refine", "candidates": 2.0}, "candidates must be a positive int, got 2.0"),
        ({"selection": "refine", "candidates": True}, "candidates must be a positive int, got True"),
        ({"prefilter": -1}, r"prefilter must be an int >= 0 \(0: none\), got -1"),
        ({"prefilter": 2.0}, r"prefilter must be an int >= 0 \(0: none\), got 2.0"),
    ],
)
def test_bad_selection_values(options, message):
    with pytest.raises(ValueError, match=message):
        HylraOptions.parse(options)


@pytest.mark.parametrize("selection", ["reuse", "oracle"])
def test_candidates_without_refine_warn(selection):
    """candidates other than the default with a selection that ignores it warn, pointing at the caller; with
    refine, or at the default, nothing warns."""
    with pytest.warns(UserWarning, match=f"candidates=8 does nothing with selection='{selection}'") as record:
        HylraOptions(selection=selection, candidates=8)
    assert record[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HylraOptions(selection="refine", candidates=8)
        HylraOptions(selection=selection, candidates=4)


def test_prefilter_that_does_nothing_warns():
    """A pre-filter with a selection that never refines, or one keeping every candidate (prefilter >= candidates,
    uniform top_k), warns; one that narrows is the op's keyword, and the default adds none."""
    with pytest.warns(UserWarning, match="prefilter=2 does nothing with selection='reuse'"):
        HylraOptions(selection="reuse", prefilter=2)
    with pytest.warns(UserWarning, match=r"prefilter=4 narrows nothing: a consumer's candidates \(candidates=4 x "):
        HylraOptions(prefilter=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert HylraOptions(prefilter=2).prefilter_settings == {"prefilter": 2}
        assert HylraOptions().prefilter_settings == {}


def test_per_layer_top_k_of_a_policy():
    """A consumer's own top_k sets its selection's n_select; it needs consumers that choose (refine, oracle),
    room for the forced blocks, and under refine no more than the producer's candidates."""
    policy = Policy(["producer", "consumer", "consumer"], [None, 0, 0], top_k=[None, 1024, 4096])
    opts = HylraOptions(policy=policy, top_k=2048, block_size=64)
    assert [opts.selection_settings(layer=layer)["n_select"] for layer in (0, 1, 2, None)] == [32, 16, 64, 32]
    assert opts.producer_settings()["n_select"] == 128  # the producer emits candidates x top_k, budgets aside
    assert opts.selection_settings(key_blocks=40, layer=2)["n_select"] == 40
    for options, message in [
        ({"selection": "reuse"}, "gives consumers their own top_k, which needs selection='refine' or 'oracle'"),
        ({"candidates": 1}, r"layer 2: top_k=4096 selects 64 blocks, more than the 32 candidates"),
        ({"block_size": 512, "local_blocks": 2}, r"layer 1: top_k=1024 selects 2 block\(s\) of 512, fewer than "),
    ]:
        with pytest.raises(ValueError, match=message):
            HylraOptions(policy=policy, top_k=2048, **{"block_size": 64, **options})
    assert HylraOptions(policy=policy, block_size=64, selection="oracle", candidates=4).layer_n_select(2) == [64]


def test_top_k_per_kv_head_of_a_policy():
    """A consumer's top_k per KV head: n_select the largest count, head_n_select each head's (this tensor-parallel
    rank's share), none where they are equal; each count capped at the KV blocks and checked like a layer's; the
    oracle cannot take them."""
    policy = Policy(["producer", "consumer", "consumer"], [None, 0, 0], num_kv_heads=4,
                    top_k=[None, [1024, 4096, 2048, 2048], [512, 512, 512, 512]])
    opts = HylraOptions(policy=policy, top_k=2048, block_size=64)
    assert opts.selection_settings(layer=1, num_kv_heads=4) == dict(
        block_size=64, n_select=64, sink_blocks=1, local_blocks=2, head_n_select=[16, 64, 32, 32])
    assert opts.selection_settings(layer=1, num_kv_heads=2, rank=1)["n_select"] == 32  # heads 2, 3: equal
    assert "head_n_select" not in opts.selection_settings(layer=1, num_kv_heads=2, rank=1)
    assert "head_n_select" not in opts.selection_settings(layer=2, num_kv_heads=4)
    assert opts.selection_settings(key_blocks=20, layer=1, num_kv_heads=4)["head_n_select"] == [16, 20, 20, 20]
    for options, message in [
        ({"selection": "oracle"}, "a top_k per KV head, which needs selection='refine'"),
        ({"candidates": 1}, r"layer 1: top_k=\[1024, 4096, 2048, 2048\] selects 64 blocks, more than the 32"),
        ({"block_size": 1024, "local_blocks": 1}, r"layer 1: top_k=\[1024, 4096, 2048, 2048\] selects 1 block"),
    ]:
        with pytest.raises(ValueError, match=message):
            HylraOptions(policy=policy, top_k=2048, **{"block_size": 64, **options})


def test_dense_layers_run_in_blocks_of_64_or_the_producers_larger_ones():
    """A dense layer selects nothing: it takes DENSE_BLOCK (64) keys per block at finer block sizes, and the
    producers' block where that is larger."""
    assert DENSE_BLOCK == 64
    assert [HylraOptions(block_size=size, top_k=4096).dense_block for size in (16, 32, 64, 128)] == [64, 64, 64, 128]
    assert HylraOptions(block_size=16, sink_blocks=4, local_blocks=8, producer_block_size=128).dense_block == 128


def test_producers_in_coarser_blocks():
    """producer_block_size: a multiple of block_size, under refine only; producers select candidates x top_k tokens
    in its blocks with at least the sink and local tokens, expanded by the factor for their consumers."""
    opts = HylraOptions(block_size=16, sink_blocks=4, local_blocks=8, producer_block_size=64)
    assert (opts.producer_block_size, opts.expansion) == (64, 4)
    assert opts.producer_settings() == dict(block_size=64, sink_blocks=1, local_blocks=2, n_select=32 * 4)
    assert opts.producer_settings(key_blocks=10)["n_select"] == 10
    assert opts.selection_settings() == dict(block_size=16, n_select=128, sink_blocks=4, local_blocks=8)
    plain = HylraOptions(block_size=16, sink_blocks=4, local_blocks=8, producer_block_size=16)
    assert (plain.producer_block_size, plain.expansion) == (16, 1)
    assert plain.producer_settings() == dict(block_size=16, sink_blocks=4, local_blocks=8, n_select=128 * 4)
    assert HylraOptions(block_size=64, producer_block_size=64).expansion == 1  # equal to block_size: no change
    for bad in (48, 32, 1.5):
        with pytest.raises(ValueError, match="producer_block_size must be a multiple of block_size=64"):
            HylraOptions(block_size=64, producer_block_size=bad)
    with pytest.raises(ValueError, match="producer_block_size=128 needs selection='refine'"):
        HylraOptions(producer_block_size=128, selection="reuse")
    # Per-layer budgets are bounded by the expanded candidates: 8 blocks of 32 tokens = 16 of 16.
    budgets = Policy(["producer", "consumer"], [None, 0], top_k=[None, 17 * 16])
    with pytest.raises(ValueError, match="more than the 16 candidates"):
        HylraOptions(policy=budgets, top_k=64, block_size=16, sink_blocks=1, local_blocks=1, candidates=4,
                     producer_block_size=32)
