"""The compile-cache key: what changes it (anything that decides the compiled graph) and what does not."""
import dataclasses
import json

import pytest

from refinenet import compile_cache as cc
from refinenet.presets import TrainPreset, preset

BASE = dict(mode="graph", device="cpu", amp_dtype="float16", ranks=2, lr_steps=30, mindspore_version="2.10.0",
            source="0" * 64, environ={"PATH": "/bin"})


def key(hp=None, **changes):
    args = dict(BASE, **changes)
    return cc.graph_key(cc.graph_key_fields(hp or preset("r1", "cpu", 2, {"depth": 18}), **args))


def test_every_preset_field_is_either_in_the_graph_or_data_only():
    fields = {f.name for f in dataclasses.fields(TrainPreset)}
    assert set(cc.GRAPH_FIELDS) | set(cc.DATA_FIELDS) == fields
    assert not set(cc.GRAPH_FIELDS) & set(cc.DATA_FIELDS)


def test_the_key_is_stable():
    assert key() == key()
    assert len(key()) == 20 and int(key(), 16) >= 0


@pytest.mark.parametrize("name, value", [("depth", 34), ("num_classes", 5), ("bn_mode", "train"),
                                         ("crop_size", 41), ("batch_size", 3), ("amp_level", "O2"),
                                         ("loss_scale", 512.0), ("weight_decay", 1e-3), ("momentum", 0.8),
                                         ("ignore_label", 254)])
def test_graph_fields_change_the_key(name, value):
    hp = preset("r1", "cpu", 2, {"depth": 18})
    assert key(dataclasses.replace(hp, **{name: value})) != key(hp)


@pytest.mark.parametrize("name, value", [("mode", "pynative"), ("device", "gpu"), ("ranks", 4),
                                         ("lr_steps", 60), ("mindspore_version", "2.9.0"),
                                         ("source", "1" * 64),
                                         ("environ", {"PATH": "/bin", "MS_DEV_JIT_SYNTAX_LEVEL": "0"})])
def test_run_settings_change_the_key(name, value):
    assert key(**{name: value}) != key()


@pytest.mark.parametrize("name, value", [("epochs", 400), ("base_lr", 0.5), ("lr_type", "poly"),
                                         ("warmup_epochs", 3), ("lr_decay_step", 7), ("lr_decay_rate", 0.5),
                                         ("save_epochs", 1), ("keep_max", 2), ("seed", 9), ("data_seed", 9),
                                         ("min_scale", 1.0), ("max_scale", 1.5)])
def test_data_only_fields_leave_the_key(name, value):
    hp = preset("r1", "cpu", 2, {"depth": 18})
    assert key(dataclasses.replace(hp, **{name: value})) == key(hp)


def test_stage_and_unrelated_environment_leave_the_key():
    """r2 differs from r1 only in its learning rate; rank and job variables never reach the graph."""
    assert key(preset("r1", "cpu", 2, {"depth": 18})) == key(preset("r2", "cpu", 2, {"depth": 18}))
    env = {"PATH": "/bin", "MS_NODE_ID": "1", "MS_ROLE": "MS_WORKER", "REFINENET_JOB_ID": "j", "GLOG_v": "1"}
    assert key(environ=env) == key()


def test_amp_dtype_counts_only_with_mixed_precision():
    plain = preset("r1", "cpu", 2, {"depth": 18, "amp_level": "O0"})
    assert key(plain, amp_dtype="bfloat16") == key(plain, amp_dtype="float16")
    mixed = dataclasses.replace(plain, amp_level="O2")
    assert key(mixed, amp_dtype="bfloat16") != key(mixed, amp_dtype="float16")


def test_source_digest_follows_every_file(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "model").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "model" / "b.py").write_text("y = 2\n")
    first = cc.source_digest.__wrapped__(str(pkg))
    assert cc.source_digest.__wrapped__(str(pkg)) == first
    (pkg / "model" / "b.py").write_text("y = 3\n")
    second = cc.source_digest.__wrapped__(str(pkg))
    (pkg / "model" / "c.py").write_text("")
    third = cc.source_digest.__wrapped__(str(pkg))
    (pkg / "notes.txt").write_text("not source")
    assert len({first, second, third}) == 3
    assert cc.source_digest.__wrapped__(str(pkg)) == third
    assert len(cc.source_digest()) == 64


def test_enable_points_mindspore_at_one_folder_per_key(tmp_path):
    fields = cc.graph_key_fields(preset("r1", "cpu", 2, {"depth": 18}), **BASE)
    assert cc.enable(fields, environ={}) is None
    env = {cc.ENV_VAR: str(tmp_path / "cache")}
    folder = cc.enable(fields, environ=env)
    assert folder == tmp_path / "cache" / cc.graph_key(fields)
    assert env["MS_COMPILER_CACHE_ENABLE"] == "1" and env["MS_COMPILER_CACHE_PATH"] == str(folder)
    assert json.loads((folder / cc.KEY_FILE).read_text()) == json.loads(json.dumps(fields))
    assert cc.cached_graphs(folder, 1) == 0
    (folder / "rank_1" / "graph_cache").mkdir(parents=True)
    for i in range(2):
        (folder / "rank_1" / "graph_cache" / f"MS_WORKERcompile_cache_{i}.mindir").write_bytes(b"")
    assert cc.cached_graphs(folder, 1) == 2 and cc.cached_graphs(folder, 0) == 0
    other = cc.graph_key_fields(preset("r1", "cpu", 2, {"depth": 34}), **BASE)
    assert cc.enable(other, environ=dict(env)) != folder


def test_enable_raises_when_the_folder_cannot_be_made(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    fields = cc.graph_key_fields(preset("r1", "cpu", 2, {"depth": 18}), **BASE)
    with pytest.raises(OSError):
        cc.enable(fields, environ={cc.ENV_VAR: str(blocker / "cache")})
