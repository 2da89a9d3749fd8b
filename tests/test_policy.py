import json

import pytest

from hylra_compile import Policy


def test_every_and_full():
    policy = Policy.every(3, num_layers=7)
    assert policy.modes == ["producer", "consumer", "consumer", "producer", "consumer", "consumer", "producer"]
    assert policy.sources == [None, 0, 0, None, 3, 3, None]
    assert Policy.full(3).modes == ["full"] * 3 and Policy.full(3).sources == [None] * 3


def test_every_over_listed_layers_leaves_the_others_full():
    """A hybrid model's global layers (1, 3, 5, 7 here): jump-n counts among them, and each consumer reuses the
    nearest earlier listed producer, never a layer left out."""
    policy = Policy.every(2, 8, layers=[7, 1, 5, 3])
    assert repr(policy) == "Policy('FPFcFPFc', num_layers=8)"
    assert policy.sources == [None, None, None, 1, None, None, None, 5]
    assert Policy.every(2, 4, layers=range(4)) == Policy.every(2, 4)


@pytest.mark.parametrize("layers, message", [
    ([], "layers is empty"),
    ([1, 4], r"layers must be indices in 0..3, got \[4\]"),
    ([0, True], r"got \[True\]"),
    ([1, 3, 1], r"lists \[1\] more than once"),
])
def test_every_refuses_bad_layers(layers, message):
    with pytest.raises(ValueError, match=message):
        Policy.every(2, 4, layers=layers)


def test_from_modes_defaults_to_nearest_earlier_producer():
    policy = Policy.from_modes(["producer", "full", "consumer", "producer", "consumer"])
    assert policy.sources == [None, None, 0, None, 3]
    explicit = Policy.from_modes(["producer", "producer", "consumer"], [None, None, 0])
    assert explicit.sources == [None, None, 0]


def test_save_load_roundtrip(tmp_path):
    policy = Policy.every(2, num_layers=4, num_kv_heads=2)
    policy.provenance["theta"] = 0.8
    policy.save(tmp_path / "p.json")
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["format"] == "hylra-policy" and data["version"] == 1 and data["num_kv_heads"] == 2
    assert Policy.load(tmp_path / "p.json") == policy


def test_head_maps_survive_save_and_load_and_are_checked(tmp_path):
    policy = Policy(["producer", "consumer", "consumer"], [None, 0, 0], num_kv_heads=2, heads=[None, (1, 0), None])
    assert policy.heads == [None, [1, 0], None]
    policy.save(tmp_path / "p.json")
    layers = json.loads((tmp_path / "p.json").read_text())["layers"]
    assert layers[1] == {"mode": "consumer", "source": 0, "heads": [1, 0]} and "heads" not in layers[2]
    assert Policy.load(tmp_path / "p.json") == policy
    modes, sources = ["producer", "consumer"], [None, 0]
    for heads, kv_heads, message in [
        ([[0, 1], None], 2, "layer 0 is 'producer' and cannot have a head map"),
        ([None, [0, 2]], 2, r"layer 1: a head map lists one KV head in \[0, 2\) for each of the 2 KV heads"),
        ([None, [0]], 2, r"for each of the 2 KV heads, got \[0\]"),
        ([None, [0, 1]], None, "has a head map but the policy does not say num_kv_heads"),
        ([None, "01"], 2, "a head map is a list of KV heads or None"),
        ([None], 2, "2 modes but 1 head maps"),
    ]:
        with pytest.raises(ValueError, match=message):
            Policy(modes, sources, num_kv_heads=kv_heads, heads=heads)


def test_per_layer_top_k_survives_save_and_load_and_is_checked(tmp_path):
    policy = Policy(["producer", "consumer", "consumer"], [None, 0, 0], top_k=[None, 1024, None])
    assert policy.has_budgets and not Policy.every(2, 3).has_budgets
    policy.save(tmp_path / "p.json")
    layers = json.loads((tmp_path / "p.json").read_text())["layers"]
    assert layers[1]["top_k"] == 1024 and "top_k" not in layers[2]
    assert Policy.load(tmp_path / "p.json") == policy
    for budgets, message in [([512, None, None], "layer 0 is 'producer' and cannot have its own top_k"),
                             ([None, 0, None], "layer 1: top_k must be a positive int, a list of them"),
                             ([None, [512, 0], None], "layer 1: top_k must be a positive int, a list of them"),
                             ([None, [], None], "layer 1: top_k must be a positive int, a list of them"),
                             ([None, [512, 256, 128], None], "layer 1: top_k lists 3 budgets, the model has 2 KV"),
                             ([None, None], "3 modes but 2 top_k entries")]:
        with pytest.raises(ValueError, match=message):
            Policy(["producer", "consumer", "consumer"], [None, 0, 0], num_kv_heads=2, top_k=budgets)


def test_top_k_per_kv_head_survives_save_and_load_and_splits_over_ranks(tmp_path):
    policy = Policy(["producer", "consumer", "consumer"], [None, 0, 0], num_kv_heads=4,
                    top_k=[None, [1024, 512, 256, 256], 2048])
    assert policy.has_head_budgets and not Policy(["producer", "consumer"], [None, 0], top_k=[None, 8]).has_head_budgets
    policy.save(tmp_path / "p.json")
    assert Policy.load(tmp_path / "p.json") == policy
    assert policy.top_k_of(1) == [1024, 512, 256, 256]
    assert policy.top_k_of(1, 4) == [1024, 512, 256, 256]
    assert policy.top_k_of(1, 2, rank=1) == [256, 256]  # rank 1 of 2 holds KV heads 2 and 3
    assert policy.top_k_of(2, 2, rank=1) == 2048 and policy.top_k_of(0, 4) is None
    with pytest.raises(ValueError, match="layer 1: top_k lists 4 KV heads' budgets, the graph holds 3"):
        policy.top_k_of(1, 3)


def test_heads_of_a_consumer_in_a_graphs_own_head_numbering():
    policy = Policy(["producer", "consumer", "consumer"], [None, 0, 0], num_kv_heads=4,
                    heads=[None, [1, 0, 3, 3], [0, 1, 2, 3]])
    assert policy.heads_of(1, 4) == ([1, 0, 3, 3], None)
    assert policy.heads_of(2, 4) == (None, None)  # the identity: equal heads
    assert policy.heads_of(0, 4) == (None, None)
    assert policy.heads_of(1, 2, rank=0) == ([1, 0], None)
    assert policy.heads_of(1, 2, rank=1) == ([1, 1], None)
    heads, why = policy.heads_of(1, 1, rank=1)
    assert heads is None and why.startswith("its head map [1, 0, 3, 3] reads KV heads of another tensor-parallel rank")


@pytest.mark.parametrize(
    "modes,sources,message",
    [
        (["producer", "dense"], None, "unknown mode 'dense'; valid modes are"),
        (["consumer", "producer"], None, "no earlier layer is a producer"),
        (["producer", "consumer", "producer"], [None, 2, None], "does not come before it"),
        (["full", "consumer"], [None, 0], "which is 'full', not 'producer'"),
        (["producer", "full"], [None, 0], "cannot have a source"),
        (["producer", "consumer"], [None, None], "needs the index of its producer"),
    ],
)
def test_bad_policies(modes, sources, message):
    with pytest.raises(ValueError, match=message):
        Policy.from_modes(modes, sources)


def test_bad_constructor_args_and_files(tmp_path):
    with pytest.raises(ValueError, match="n >= 1"):
        Policy.every(0, 4)
    with pytest.raises(ValueError, match="num_layers"):
        Policy.full(0)
    with pytest.raises(ValueError, match="does not exist"):
        Policy.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        Policy.load(tmp_path / "bad.json")
    data = Policy.full(2).to_dict()
    data["version"] = 99
    (tmp_path / "v.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unsupported hylra policy version 99"):
        Policy.load(tmp_path / "v.json")


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\xff", b'{"format": "hylra-policy", "version": 1, '
                                     b'"num_layers": 1, "layers": [7]}', b"[1, 2]"])
def test_broken_policy_files_are_named(tmp_path, content):
    """A binary file, a layer that is not an object, a list: a ValueError naming the file, never a raw
    UnicodeDecodeError / TypeError / AttributeError."""
    path = tmp_path / "broken.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="broken.json"):
        Policy.load(path)
    assert Policy.is_policy_file(path) == content.startswith(b'{"format": "hylra-policy"')  # may be replaced


def test_save_is_atomic(tmp_path, monkeypatch):
    """A failed save leaves the earlier policy file whole."""
    path = tmp_path / "p.json"
    Policy.every(2, 4).save(path)
    monkeypatch.setattr("hylra_compile.policy.json.dumps", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        Policy.full(4).save(path)
    assert Policy.load(path) == Policy.every(2, 4) and Policy.is_policy_file(path)


def test_check_model():
    policy = Policy.every(2, 4, num_kv_heads=8)
    policy.check_model(4, 8)
    with pytest.raises(ValueError, match="has 4 layers but the model has 3"):
        policy.check_model(3, 8)
    with pytest.raises(ValueError, match="made for a model with 8 KV heads, this graph has 2"):
        policy.check_model(4, 2)


def test_check_graph_takes_any_subset_of_the_layers():
    policy = Policy.every(2, 4, num_kv_heads=8)
    policy.check_graph([2, 3], 8)  # the second half of a model split by a graph break
    with pytest.raises(ValueError, match=r"attention at layer\(s\) \[4, 5\] but the policy lists 4 layers"):
        policy.check_graph([3, 4, 5], 8)


def test_policy_json_missing_keys(tmp_path):
    data = Policy.every(2, 2).to_dict()
    del data["layers"][1]["source"]
    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"policy is missing layers\[1\].source"):
        Policy.load(tmp_path / "p.json")
