"""benchmarks/frontier.py: settings of a group, and the table joining accuracy with the speed of the same setting."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from hylra_compile import Policy
from hylra_compile.evaluate import Evaluation, Result

FRONTIER = Path(__file__).resolve().parents[2] / "benchmarks" / "frontier.py"


@pytest.fixture(scope="module")
def frontier():
    spec = importlib.util.spec_from_file_location("frontier", FRONTIER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_profile_only_when_a_budget_setting_is_asked_for(frontier):
    def no_profile():
        raise AssertionError("profiled")

    settings = frontier.settings_of("mechanisms", 24, 6, no_profile, only=["every:4 refine", "every:4 oracle"])
    assert {name: s.options for name, s in settings.items()} == {"every:4 refine": {"selection": "refine"},
                                                                 "every:4 oracle": {"selection": "oracle"}}
    assert settings["every:4 refine"].policy == Policy.every(4, 24)
    assert [s.phases for s in frontier.settings_of("phases", 24, 6, no_profile).values()] == [("prefill",),
                                                                                             ("decode",)]
    attribution = frontier.settings_of("attribution", 8, 2, no_profile)
    assert list(attribution) == ["every:4", *[f"every:4 +dense {layer}" for layer in (1, 2, 3, 5, 6, 7)]]
    assert attribution["every:4 +dense 2"].policy.modes[2] == "full"


def test_refinement_settings_share_the_budget_policy_and_set_their_own_options(frontier, monkeypatch):
    def optimize(profile, budget, map_heads=False):  # a policy that says which profile and map made it
        return Policy.every(profile + 10 * map_heads, 24)

    def allocate_top_k(policy, profile, top_k, block_size, min_blocks, per_head=False):  # says what it was given
        return Policy(policy.modes, policy.sources,
                      provenance={"allocated": (profile, top_k, block_size, per_head, min_blocks)})

    monkeypatch.setattr(frontier, "optimize", optimize)
    monkeypatch.setattr(frontier, "allocate_top_k", allocate_top_k)
    settings = frontier.settings_of("refinement", 24, 6, lambda candidates=1: 4 + candidates, top_k=1024,
                                    block_size=32)
    assert {name: s.options for name, s in settings.items()} == {
        "budget:6": {}, "budget:6 refine": {"selection": "refine"},
        "budget:6 refine c8": {"selection": "refine", "candidates": 8}, "budget:6 4x top_k": {"top_k": 4096},
        "budget:6 refine c2": {"selection": "refine", "candidates": 2},
        "budget:6 refine pf2": {"selection": "refine", "prefilter": 2},
        "budget:6 refine c8 pf4": {"selection": "refine", "candidates": 8, "prefilter": 4},
        "budget:6r refine": {"selection": "refine"}, "budget:6 refine by need": {"selection": "refine"},
        "budget:6 refine by head need": {"selection": "refine"},
        "budget:6 refine by head need pf2": {"selection": "refine", "prefilter": 2}, "budget:6 heads": {},
        "budget:6r refine heads": {"selection": "refine"}}
    plain = [name for name in settings if "6r" not in name and "heads" not in name and "need" not in name]
    assert all(settings[name].policy == Policy.every(5, 24) for name in plain)
    by_need = settings["budget:6 refine by need"].policy
    # at block 32 the selection forces 2 sink and 4 local blocks: no consumer gets fewer
    assert by_need.modes == Policy.every(5, 24).modes and by_need.provenance["allocated"] == (5, 1024, 32, False, 6)
    assert settings["budget:6 refine by head need"].policy.provenance["allocated"] == (5, 1024, 32, True, 6)
    assert settings["budget:6 refine by head need pf2"].policy == settings["budget:6 refine by head need"].policy
    assert settings["budget:6r refine"].policy == Policy.every(8, 24)  # from the profile with 4 candidates
    assert settings["budget:6 heads"].policy == Policy.every(15, 24)  # head-mapped, the reuse profile
    assert settings["budget:6r refine heads"].policy == Policy.every(18, 24)
    blocks = frontier.settings_of("blocks", 24, 6, lambda: 4)
    assert list(blocks) == ["budget:6 oracle", "budget:6 refine", "budget:6 oracle b32", "budget:6 refine b32",
                            "budget:6 refine b32 p64", "budget:6 oracle b16", "budget:6 refine b16",
                            "budget:6 refine b16 p64"]
    assert blocks["budget:6 refine b16 p64"].options == {"selection": "refine", "block_size": 16, "sink_blocks": 4,
                                                         "local_blocks": 8, "producer_block_size": 64}
    window = frontier.settings_of("window", 24, 6, lambda: 4, only=["budget:6 refine sink0 local2"])
    assert {name: s.options for name, s in window.items()} == {
        "budget:6 refine sink0 local2": {"selection": "refine", "sink_blocks": 0, "local_blocks": 2}}
    assert window["budget:6 refine sink0 local2"].policy == Policy.every(4, 24)
    assert len(frontier.settings_of("window", 24, 6, lambda: 4)) == 6
    blocks = frontier.settings_of("blocks", 24, 6, lambda: 4, only=["budget:6 refine", "budget:6 oracle b16"])
    assert {name: s.options for name, s in blocks.items()} == {
        "budget:6 refine": {"selection": "refine"},
        "budget:6 oracle b16": {"selection": "oracle", "block_size": 16, "sink_blocks": 4, "local_blocks": 8,
                                "producer_block_size": 16}}


def save_run(folder: Path, stem: str, results: list[tuple[Result, float, int]], prompts: int,
             experiment: str | None = None) -> None:
    """A frontier accuracy file of ``results`` (each with its KL and its pass-key hits among ``prompts``)."""
    for result, kl, hits in results:
        result.positions, result.kl, result.nll = 100, kl * 100, 100.0
        result.error_sq, result.dense_sq = [kl], [1.0]
        result.correct = {f"passkey-32768-d0.{i % 4}-s{i}": i < hits for i in range(prompts)}
    metadata = {"model": "m", "num_layers": 24, "device": "GPU", "date": "d", "top_k": 2048, "block_size": 64,
                "sink_blocks": 1, "local_blocks": 2, "min_seq_len": 4096, "selection": "reuse", "lengths": [32768],
                "seq_len": 32768, "text": "prose", "text_windows": 1, "prompts": prompts,
                **({"experiment": experiment} if experiment else {})}
    Evaluation([result for result, _, _ in results], metadata).save(folder, stem=stem)


def accuracy_file(folder: Path) -> None:
    coarse = {"selection": "refine", "block_size": 16, "sink_blocks": 4, "local_blocks": 8, "producer_block_size": 64}
    save_run(folder, "frontier-accuracy-m-32768-2048-mechanisms",
             [(Result("dense", 24), 0.0, 6), (Result("every:4", 6), 0.09, 1),
              (Result("every:4 refine", 6, options={"selection": "refine"}), 0.04, 5), (Result("budget:6", 6), 0.03, 5),
              (Result("budget:6 refine", 6, options=coarse), 0.02, 5)], prompts=6)


def speed_file(folder: Path, refine: bool = False) -> None:
    row = dict(batch=1, top_k=2048, date="d", device="GPU", run="r1")
    rows = [dict(row, variant="eager", context=32768, ttft_s=1.4, decode_ms=36.0),
            dict(row, variant="inductor", context=32768, ttft_s=1.4, decode_ms=24.0),
            dict(row, variant="8of32", context=32768, ttft_s=1.0, decode_ms=9.6),
            dict(row, variant="5of32", context=32768, ttft_s=1.0, decode_ms=9.0),
            dict(row, variant="5of32", context=32768, error="out of memory")]
    if refine:  # another device's run: its ratios are to its own eager and inductor rows
        other = dict(row, device="GPU2", run="r2")
        rows += [dict(other, variant="8of32-refine", context=32768, ttft_s=1.1, decode_ms=5.0),
                 dict(other, variant="inductor", context=32768, ttft_s=1.0, decode_ms=20.0),
                 dict(other, variant="eager", context=32768, ttft_s=2.2, decode_ms=30.0)]
    (folder / "e2e-GPU.json").write_text(json.dumps(rows))


def test_table_joins_speed_of_the_same_share_and_marks_the_front(frontier, tmp_path):
    accuracy_file(tmp_path)
    speed_file(tmp_path)
    rows = {r["setting"]: r for r in frontier.frontier_rows(tmp_path)}
    assert rows["every:4"]["speed"]["variant"] == "8of32"  # 6 of 24 full-attention layers: a quarter, as 8 of 32
    assert rows["every:4"]["speed"]["decode_speedup_32K"] == pytest.approx(24.0 / 9.6)
    assert rows["every:4"]["speed"]["ttft_ratio_32K"] == pytest.approx(1.0 / 1.4)
    assert rows["every:4 refine"]["speed"] is None  # no speed row runs refine (yet)
    assert rows["budget:6"]["pareto"] and not rows["every:4"]["pareto"]  # same speed, lower KL, more hits
    assert not rows["every:4 refine"]["pareto"]  # no measured speed: never on the front
    assert rows["every:4"]["retrieval"] == {"passkey": (1, 6)} and not rows["every:4"]["retrieval_as_dense"]
    # Coarse producers are named in the setting (a run's --producer-block-size adds them to its settings' options).
    coarse = rows["budget:6 refine p64"]
    assert (coarse["block_size"], coarse["producer_block_size"], coarse["speed"]) == (16, 64, None)
    frontier.table(tmp_path)
    text = (tmp_path / "frontier.md").read_text()
    assert "| ★ | budget:6 |" in text and "no bench_e2e row of a -refine variant at top_k 2048" in text
    assert (tmp_path / "frontier.png").read_bytes().startswith(b"\x89PNG")


def test_runs_of_another_retrieval_sample_get_their_own_table(frontier, tmp_path):
    """A run of 24 prompts per task beside one of 6: two tables, the larger first, each row judged against the
    dense run of its own prompts and competing for the front only within its table."""
    accuracy_file(tmp_path)
    save_run(tmp_path, "frontier-accuracy-m-32768-2048-blocks",
             [(Result("dense", 24), 0.0, 20), (Result("budget:6", 6), 0.5, 10)], prompts=24)
    speed_file(tmp_path)
    frontier.table(tmp_path)
    text = (tmp_path / "frontier.md").read_text()
    large, small = text.index("24 retrieval prompts"), text.index("6 retrieval prompts")
    assert large < small
    assert "| ★ | budget:6 | 6/24 | 0.5000 | +0.0% | 10/24 [24–61] **↓** |" in text[large:small]  # 20/24 dense
    assert "| ★ | budget:6 | 6/24 | 0.0300 |" in text[small:]  # not dominated by a row of the other sample


def test_attribution_runs_stay_out_of_the_table(frontier, tmp_path):
    """One layer made dense at a time diagnoses where the loss is; it is no setting to choose, so the table leaves
    it to its own file."""
    accuracy_file(tmp_path)
    save_run(tmp_path, "frontier-accuracy-m-32768-2048-attribution",
             [(Result("dense", 24), 0.0, 6), (Result("every:4 +dense 1", 7), 0.08, 2)], prompts=6,
             experiment="frontier attribution")
    assert "every:4 +dense 1" not in {r["setting"] for r in frontier.frontier_rows(tmp_path)}
    assert "every:4" in {r["setting"] for r in frontier.frontier_rows(tmp_path)}


def test_refine_settings_join_the_refine_variant_with_ratios_of_its_own_device(frontier, tmp_path):
    accuracy_file(tmp_path)
    speed_file(tmp_path, refine=True)
    rows = {r["setting"]: r for r in frontier.frontier_rows(tmp_path)}
    speed = rows["every:4 refine"]["speed"]
    assert speed["variant"] == "8of32-refine" and speed["device_32K"] == "GPU2"
    assert speed["decode_speedup_32K"] == pytest.approx(20.0 / 5.0)
    assert speed["ttft_ratio_32K"] == pytest.approx(1.1 / 2.2)
    assert rows["every:4"]["speed"]["variant"] == "8of32"  # reuse settings never take a -refine row
    # Nor a setting of another block size or candidate count: those rows ran block 64 and 4 candidates.
    speed = json.loads(next(tmp_path.glob("e2e-*.json")).read_text())
    assert frontier.speed_of(speed, 0.25, 2048, "refine")["variant"] == "8of32-refine"
    assert frontier.speed_of(speed, 0.25, 2048, "refine", block_size=32) is None
    assert frontier.speed_of(speed, 0.25, 2048, "refine", candidates=8) is None
    assert frontier.speed_of(speed, 0.25, 2048, "refine", producer_block_size=128) is None
    assert frontier.speed_of(speed, 0.25, 2048, "reuse", candidates=8)["variant"] == "8of32"
    # A block-32 row joins the eager and inductor rows of its run, which have no block size.
    block32 = [{**r, "block_size": 32} for r in speed if r["variant"] == "8of32-refine"]
    joined = frontier.speed_of(speed + block32, 0.25, 2048, "refine", block_size=32)
    assert joined["decode_speedup_32K"] == pytest.approx(20.0 / 5.0)
    assert joined["ttft_ratio_32K"] == pytest.approx(1.1 / 2.2)
    # A later row from a device with no baselines does not hide the ratios of an earlier one that has them.
    lone = [{**r, "device": "GPU3", "run": "lone", "decode_ms": 1.0} for r in speed if r["variant"] == "8of32-refine"]
    assert frontier.speed_of(speed + lone, 0.25, 2048, "refine")["decode_speedup_32K"] == pytest.approx(20.0 / 5.0)
    assert frontier.speed_of(lone, 0.25, 2048, "refine")["decode_ms_32K"] == 1.0  # alone: its time, no ratio
    # Rows of bench_e2e runs over several top_k: the baselines record none and join every top_k of their run.
    per_row = [{**r, "top_k": None} if r["variant"] in ("eager", "inductor") else r for r in speed]
    per_row += [{**r, "top_k": 8192, "decode_ms": 8.0} for r in speed if r["variant"] == "8of32-refine"]
    assert frontier.speed_of(per_row, 0.25, 8192, "refine")["decode_speedup_32K"] == pytest.approx(20.0 / 8.0)
    assert frontier.speed_of(per_row, 0.25, 2048, "refine")["decode_speedup_32K"] == pytest.approx(20.0 / 5.0)


def _evaluation(settings, metadata, done: int, planned: int) -> Evaluation:
    metadata = {**metadata, "num_layers": 8, "device": "cpu", "date": "d", "top_k": 2048, "block_size": 64,
                "sink_blocks": 1, "local_blocks": 2, "min_seq_len": 4096, "selection": "reuse",
                "lengths": [512], "seq_len": 512, "text_windows": 2, "prompts": done, "prompts_planned": planned}
    results = [Result("dense", 8)] + [Result(name, 2) for name in settings]
    for result in results:
        result.positions, result.kl, result.nll, result.error_sq, result.dense_sq = 10, 0.1, 10.0, [0.1], [1.0]
    return Evaluation(results, metadata)


def _stand_in_model(frontier, monkeypatch, prompts_per_haystack: int) -> None:
    """frontier.accuracy without a model: an 8-layer config, one 64-token window per text, passkey prompts."""
    import types

    import torch

    model = types.SimpleNamespace(config=types.SimpleNamespace(num_hidden_layers=8, num_key_value_heads=2))
    monkeypatch.setattr(frontier, "load_config", lambda name: model.config)
    monkeypatch.setattr(frontier, "load_model", lambda name, device, dtype: (model, None))
    monkeypatch.setattr(frontier, "builtin_text", lambda name: name)
    monkeypatch.setattr(frontier, "full_windows", lambda texts, **_: [torch.zeros(64, dtype=torch.long)])
    monkeypatch.setattr(frontier, "make_prompts", lambda *args, **kwargs: [
        types.SimpleNamespace(task="passkey", haystack=haystack, length=512, seed=seed)
        for haystack in ("filler", "prose") for seed in range(prompts_per_haystack)])


def test_groups_sharing_the_prompts_run_as_one_evaluation(frontier, monkeypatch, tmp_path):
    """Two groups in one call: one evaluation (dense once) over both groups' settings, saved as one file per group
    holding dense and that group's settings; attribution, on fewer prompts, runs alone."""
    import argparse

    _stand_in_model(frontier, monkeypatch, prompts_per_haystack=24)
    calls = []

    def evaluate(model, settings, prompts, metadata, **_):
        calls.append((sorted(settings), len(prompts)))
        return _evaluation(settings, metadata, len(prompts), len(prompts))

    monkeypatch.setattr(frontier, "evaluate", evaluate)
    args = argparse.Namespace(model="m", length=512, top_k=2048, block_size=64, producer_block_size=None,
                              samples=6, tasks="passkey",
                              windows=1, attribution_prompts=24, device="cpu", out=tmp_path, no_progress=True,
                              no_cache=True,
                              dense_layers=2, group=["phases", "mechanisms", "attribution"],
                              only=["every:4 prefill only", "every:4 decode only", "every:4 refine", "every:4",
                                    "every:4 +dense 1"])
    frontier.accuracy(args)
    assert calls == [(["every:4", "every:4 decode only", "every:4 prefill only", "every:4 refine"], 48),
                     (["every:4", "every:4 +dense 1"], 24)]
    saved = {path.stem.rsplit("-", 1)[-1]: [r["name"] for r in json.loads(path.read_text())["results"]]
             for path in tmp_path.glob("frontier-accuracy-*.json")}
    assert saved == {"phases": ["dense", "every:4 prefill only", "every:4 decode only"],
                     "mechanisms": ["dense", "every:4", "every:4 refine"],
                     "attribution": ["dense", "every:4", "every:4 +dense 1"]}
    # Another block size than 64: its own files, beside those of block 64.
    args.block_size, args.group, args.only = 32, ["mechanisms"], ["every:4"]
    frontier.accuracy(args)
    assert (tmp_path / "frontier-accuracy-m-512-2048-mechanisms-b32.json").exists()
    assert (tmp_path / "frontier-accuracy-m-512-2048-mechanisms.json").exists()


def test_only_names_no_setting_of_the_groups_is_refused(frontier):
    """``--only`` with a name no setting of the groups has stops before the model loads, listing the valid ones
    (it ran dense alone before); names of any asked group pass."""
    selection = {"top_k": 2048, "block_size": 64, "sink_blocks": 1, "local_blocks": 2, "min_seq_len": 4096}
    frontier.check_settings(["budget:6 refine sink0 local2", "budget:6 refine by head need"],
                            ["window", "refinement"], 24, 2, 6, selection)
    frontier.check_settings(None, ["mechanisms"], 24, 2, 6, selection)
    with pytest.raises(SystemExit, match=r"--only \['budget:7 refine'\]: no such setting .* valid: \['budget:6',"):
        frontier.check_settings(["budget:7 refine", "budget:6 refine"], ["refinement"], 24, 2, 6, selection)


def test_options_the_backend_refuses_stop_before_the_model_loads(frontier):
    """A top_k of fewer blocks than the forced sink and local ones is refused with the backend's own message,
    for the run and for a setting whose own options are at fault (it failed after a 26 s load before)."""
    selection = {"top_k": 128, "block_size": 64, "sink_blocks": 1, "local_blocks": 2, "min_seq_len": 128}
    with pytest.raises(SystemExit, match=r"frontier.py accuracy: top_k=128 selects 2 block\(s\) of 64"):
        frontier.check_settings(None, ["mechanisms"], 24, 2, 6, selection)
    selection["top_k"] = 256
    frontier.check_settings(["budget:6 refine sink1 local2"], ["window"], 24, 2, 6, selection)
    with pytest.raises(SystemExit, match=r"setting 'budget:6 refine sink2 local8': top_k=256 selects 4 block"):
        frontier.check_settings(["budget:6 refine sink2 local8"], ["window"], 24, 2, 6, selection)




def test_a_run_cut_short_keeps_its_last_checkpoint(frontier, monkeypatch, tmp_path, capsys):
    """Prompts run in spread order (tasks and haystacks in turn), and a checkpoint is saved as the group's files, so
    a device job killed mid-run leaves what it measured, marked cut short."""
    import argparse

    _stand_in_model(frontier, monkeypatch, prompts_per_haystack=4)
    monkeypatch.setattr(frontier, "CHECKPOINT_SECONDS", 0)
    orders = []

    def evaluate(model, settings, prompts, metadata, checkpoint, **_):
        orders.append([(p.haystack, p.seed) for p in prompts])
        checkpoint(_evaluation(settings, metadata, 3, len(prompts)))
        raise TimeoutError("the device job's time limit")

    monkeypatch.setattr(frontier, "evaluate", evaluate)
    args = argparse.Namespace(model="m", length=512, top_k=2048, block_size=64, producer_block_size=None,
                              samples=4, tasks="passkey",
                              windows=1, attribution_prompts=24, device="cpu", out=tmp_path, no_progress=True,
                              no_cache=True,
                              dense_layers=2, group=["mechanisms"], only=["every:4"])
    with pytest.raises(TimeoutError):
        frontier.accuracy(args)
    assert orders == [[("filler", 0), ("prose", 0), ("filler", 2), ("prose", 2), ("filler", 1), ("prose", 1),
                       ("filler", 3), ("prose", 3)]]
    saved = json.loads((tmp_path / "frontier-accuracy-m-512-2048-mechanisms.json").read_text())["metadata"]
    assert (saved["prompts"], saved["prompts_planned"]) == (3, 8)
    assert "cut short" in (tmp_path / "frontier-accuracy-m-512-2048-mechanisms.md").read_text()
    assert "frontier mechanisms: 3 of 8 prompts after" in capsys.readouterr().err


def test_the_cache_hands_dense_answers_and_profiles_to_the_next_run(frontier, tmp_path):
    """Dense's answers are kept by prompt name, text and max_new_tokens (a prompt whose text changed is run again);
    profile files are named by everything that decides them."""
    import types

    cache = frontier.Cache(tmp_path / "c", "/models/Qwen 0.5B.gguf", "cuda:0")
    assert (tmp_path / "c").is_dir()  # made before any long work, where profiles are saved
    (tmp_path / "file").touch()
    with pytest.raises(ValueError, match="--cache .* cannot be written"):
        frontier.Cache(tmp_path / "file" / "c", "m", "cpu")
    prompts = [types.SimpleNamespace(name=f"passkey-64-d0.50-s{i}", text=f"text {i}") for i in range(3)]
    assert cache.dense_answers(prompts, max_new_tokens=12) == {}
    cache.keep_dense_answers({"passkey-64-d0.50-s0": "123", "passkey-64-d0.50-s1": "456"}, prompts, 12)
    cache.keep_dense_answers({"passkey-64-d0.50-s2": "789"}, prompts, 12)
    assert cache.dense_answers(prompts, max_new_tokens=12) == {"passkey-64-d0.50-s0": "123",
                                                               "passkey-64-d0.50-s1": "456",
                                                               "passkey-64-d0.50-s2": "789"}
    prompts[1].text = "another haystack"
    assert set(cache.dense_answers(prompts, max_new_tokens=12)) == {"passkey-64-d0.50-s0", "passkey-64-d0.50-s2"}
    assert cache.dense_answers(prompts, max_new_tokens=8) == {}
    assert cache.profile_path(32768, 4, top_k=2048, block_size=16, sink_blocks=4, local_blocks=8).name == (
        "profile-Qwen_0.5B-cuda-32768-2048-b16-s4-l8-c4.safetensors")


def test_producer_block_size_applies_to_refine_settings_only(frontier):
    """--producer-block-size sets every asked setting's producers' blocks; a setting that does not refine is refused
    by name before the model loads."""
    selection = {"top_k": 256, "block_size": 16, "sink_blocks": 4, "local_blocks": 8, "min_seq_len": 256}
    frontier.check_settings(["budget:6 refine by head need"], ["refinement"], 24, 2, 6, selection, 64)
    with pytest.raises(SystemExit, match=r"needs selection='refine'; these settings have another: \['budget:6'\]"):
        frontier.check_settings(["budget:6", "budget:6 refine"], ["refinement"], 24, 2, 6, selection, 64)
    settings = {"r": frontier.Setting(Policy.every(4, 8), {"selection": "refine"})}
    assert frontier.with_producer_blocks(settings, 64)["r"].options == {"selection": "refine",
                                                                       "producer_block_size": 64}
    assert frontier.with_producer_blocks(settings, None) is settings
