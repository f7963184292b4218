import json

import pytest

from launcher.resume import CheckpointInfo, ScanError, choose_resume, parse_scan


def ck(host, epoch, steps=10):
    return CheckpointInfo(path=f"/{host}/ckpt/refinenet-{epoch}_{steps}.ckpt", epoch=epoch, step=steps,
                          global_step=epoch * steps)


def test_newest_common_checkpoint_wins_with_per_host_paths():
    scans = {"a": [ck("a", 1), ck("a", 2), ck("a", 3)], "b": [ck("b", 1), ck("b", 2)]}
    point = choose_resume(scans)
    assert (point.name, point.epoch, point.global_step) == ("refinenet-2_10.ckpt", 2, 20)
    assert point.paths == {"a": "/a/ckpt/refinenet-2_10.ckpt", "b": "/b/ckpt/refinenet-2_10.ckpt"}


def test_no_common_checkpoint_means_fresh_start():
    assert choose_resume({"a": [ck("a", 1)], "b": []}) is None
    assert choose_resume({}) is None


def test_parse_scan_round_trip_and_errors():
    out = json.dumps([{"checkpoint": "/x/refinenet-2_5.ckpt", "epoch": 2, "step": 5, "global_step": 10,
                       "sha256": "ab"}])
    assert parse_scan(out) == (CheckpointInfo("/x/refinenet-2_5.ckpt", 2, 5, 10),)
    with pytest.raises(ScanError):
        parse_scan("not json")
    with pytest.raises(ScanError):
        parse_scan('[{"epoch": 1}]')
