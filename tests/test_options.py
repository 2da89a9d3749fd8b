import pytest

from hylra_compile import HylraOptions, Policy


def test_defaults():
    opts = HylraOptions.parse({})
    assert (opts.top_k, opts.block_size, opts.sink_blocks, opts.local_blocks) == (2048, 64, 1, 2)
    assert opts.min_seq_len == 4096 and opts.inductor is True and opts.policy is None
    assert opts.n_select == 32


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
