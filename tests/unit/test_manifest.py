"""Manifests tell complete checkpoints from partial or corrupt ones; `scan` is what the launcher reads."""
import json
import os
import subprocess
import sys

import pytest

from refinenet import manifest as mf


def _checkpoint(folder, epoch, step, steps_per_epoch=None, payload=None, *, with_manifest=True):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / mf.ckpt_name(epoch, step)
    path.write_bytes(payload if payload is not None else os.urandom(256))
    if with_manifest:
        spe = steps_per_epoch or step
        m = mf.make_manifest(path, stage="r1", epoch=epoch, step=step, steps_per_epoch=spe,
                             global_step=epoch * spe, rank=0)
        mf.write_manifest(path, m)
    return path


def test_names_round_trip():
    assert mf.ckpt_name(115, 284) == "refinenet-115_284.ckpt"
    assert mf.parse_ckpt_name("refinenet-115_284.ckpt") == (115, 284)
    for bad in ("refinenet-1_2.ckpt.tmp", ".tmp-1-refinenet-1_2.ckpt", "refinenet_1-1_2.ckpt", "x-1_2.ckpt"):
        assert mf.parse_ckpt_name(bad) is None


def test_manifest_has_the_contract_fields(tmp_path):
    path = _checkpoint(tmp_path, 3, 10)
    data = json.loads(mf.manifest_path(path).read_text())
    assert set(data) == {"format", "checkpoint", "stage", "epoch", "step", "steps_per_epoch", "global_step",
                         "size", "sha256", "created", "rank", "job_id"}
    assert data["format"] == "refinenet-ckpt/1" and data["checkpoint"] == "refinenet-3_10.ckpt"
    assert data["global_step"] == 30 and data["size"] == 256
    assert mf.verify(path).sha256 == mf.file_sha256(path)


def test_complete_partial_corrupt_and_missing(tmp_path):
    good = _checkpoint(tmp_path, 1, 10)
    truncated = _checkpoint(tmp_path, 2, 10)
    with open(truncated, "r+b") as f:
        f.truncate(100)
    flipped = _checkpoint(tmp_path, 3, 10)
    data = bytearray(flipped.read_bytes())
    data[7] ^= 0xFF
    flipped.write_bytes(bytes(data))
    no_manifest = _checkpoint(tmp_path, 4, 10, with_manifest=False)
    bad_json = _checkpoint(tmp_path, 5, 10)
    mf.manifest_path(bad_json).write_text('{"format": "refinenet-ckpt/1", "epoch": ')
    orphan = _checkpoint(tmp_path, 6, 10)
    orphan.unlink()

    complete, skipped = mf.scan(tmp_path)
    assert [e.path for e in complete] == [str(good.resolve())]
    reasons = {os.path.basename(p): why for p, why in skipped}
    assert "partial" in reasons["refinenet-2_10.ckpt"]
    assert "sha256" in reasons["refinenet-3_10.ckpt"]
    assert "missing" in reasons["refinenet-4_10.ckpt"]
    assert "not valid JSON" in reasons["refinenet-5_10.ckpt"]
    assert "checkpoint file is missing" in reasons["refinenet-6_10.ckpt"]
    assert no_manifest.exists()
    # Without hashing, only the size check runs: the bit flip goes unnoticed.
    fast, _ = mf.scan(tmp_path, check_hash=False)
    assert {os.path.basename(e.path) for e in fast} == {"refinenet-1_10.ckpt", "refinenet-3_10.ckpt"}


def test_manifest_fields_are_validated(tmp_path):
    path = _checkpoint(tmp_path, 1, 4)
    data = json.loads(mf.manifest_path(path).read_text())
    for change, needle in (({"format": "other/1"}, "format"), ({"epoch": "1"}, "'epoch'"),
                           ({"checkpoint": "refinenet-9_9.ckpt"}, "names")):
        mf.write_json_atomic(mf.manifest_path(path), {**data, **change})
        with pytest.raises(mf.ManifestError, match=needle):
            mf.verify(path)
    missing = dict(data)
    del missing["sha256"]
    mf.write_json_atomic(mf.manifest_path(path), missing)
    with pytest.raises(mf.ManifestError, match="'sha256' is missing"):
        mf.verify(path)


def test_scan_orders_by_global_step_and_accepts_the_output_dir(tmp_path):
    ckpt = tmp_path / "ckpt"
    for epoch in (2, 10, 5):
        _checkpoint(ckpt, epoch, 7)
    (ckpt / ".tmp-123-refinenet-12_7.ckpt").write_bytes(b"partial")
    by_dir = [e.manifest.epoch for e in mf.scan(ckpt)[0]]
    by_output = [e.manifest.epoch for e in mf.scan(tmp_path)[0]]
    assert by_dir == by_output == [10, 5, 2]


def test_atomic_json_write_leaves_no_temporaries(tmp_path):
    target = tmp_path / "a.json"
    mf.write_json_atomic(target, {"x": 1})
    mf.write_json_atomic(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert os.listdir(tmp_path) == ["a.json"]


def _run_scan(*args):
    return subprocess.run([sys.executable, "-m", "refinenet.manifest", "scan", *args],
                          capture_output=True, text=True, timeout=60)


def test_scan_command_prints_json_and_reasons(tmp_path):
    _checkpoint(tmp_path / "ckpt", 1, 5)
    newest = _checkpoint(tmp_path / "ckpt", 2, 5)
    broken = _checkpoint(tmp_path / "ckpt", 3, 5)
    with open(broken, "ab") as f:
        f.write(b"x")
    proc = _run_scan(str(tmp_path), "--verify")
    assert proc.returncode == 0, proc.stderr
    records = json.loads(proc.stdout)
    assert [r["epoch"] for r in records] == [2, 1]
    assert records[0]["checkpoint"] == str(newest.resolve())
    assert {"checkpoint", "epoch", "step", "global_step"} <= set(records[0])
    assert "refinenet-3_5.ckpt" in proc.stderr and "partial" in proc.stderr


def test_scan_command_missing_dir_is_empty_and_file_is_bad_input(tmp_path):
    proc = _run_scan(str(tmp_path / "nope"), "--verify")
    assert proc.returncode == 0 and json.loads(proc.stdout) == []
    (tmp_path / "file").write_text("x")
    proc = _run_scan(str(tmp_path / "file"))
    assert proc.returncode == 2 and "not a directory" in proc.stderr


def test_manifest_module_does_not_import_mindspore():
    code = "import sys, refinenet.manifest; print('mindspore' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.strip() == "False"


def test_the_manifest_names_its_job(tmp_path, monkeypatch):
    monkeypatch.setenv("REFINENET_JOB_ID", "job-7")
    path = _checkpoint(tmp_path, 1, 4)
    assert json.loads(mf.manifest_path(path).read_text())["job_id"] == "job-7"
    assert mf.verify(path).job_id == "job-7"
    other = tmp_path / mf.ckpt_name(2, 4)
    other.write_bytes(b"x" * 10)
    mf.mark_complete(other, epoch=2, step=4, steps_per_epoch=4, job_id="given")
    assert mf.verify(other).job_id == "given"
    monkeypatch.delenv("REFINENET_JOB_ID")
    third = tmp_path / mf.ckpt_name(3, 4)
    third.write_bytes(b"y" * 10)
    mf.mark_complete(third, epoch=3, step=4, steps_per_epoch=4)
    assert mf.verify(third).job_id == ""


def test_a_manifest_from_before_job_ids_stays_valid(tmp_path):
    path = _checkpoint(tmp_path, 1, 4)
    data = json.loads(mf.manifest_path(path).read_text())
    del data["job_id"]
    mf.write_json_atomic(mf.manifest_path(path), data)
    assert mf.verify(path).job_id == ""
    (entry,), skipped = mf.scan(tmp_path)
    assert skipped == [] and entry.to_json()["job_id"] == ""


def test_scan_without_verify_checks_sizes_only_and_prints_the_job(tmp_path, monkeypatch):
    monkeypatch.setenv("REFINENET_JOB_ID", "job-a")
    flipped = _checkpoint(tmp_path / "ckpt", 1, 5)
    data = bytearray(flipped.read_bytes())
    data[0] ^= 0xFF
    flipped.write_bytes(bytes(data))
    fast = _run_scan(str(tmp_path))
    assert fast.returncode == 0
    assert [(r["epoch"], r["job_id"]) for r in json.loads(fast.stdout)] == [(1, "job-a")]
    slow = _run_scan(str(tmp_path), "--verify")
    assert json.loads(slow.stdout) == [] and "sha256" in slow.stderr


def _run_verify(path):
    return subprocess.run([sys.executable, "-m", "refinenet.manifest", "verify", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_verify_command_checks_one_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("REFINENET_JOB_ID", "job-v")
    good = _checkpoint(tmp_path, 1, 5)
    proc = _run_verify(good)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"complete: {good}: size and sha256 match") and "'job-v'" in proc.stdout
    flipped = _checkpoint(tmp_path, 2, 5)
    data = bytearray(flipped.read_bytes())
    data[3] ^= 0x01
    flipped.write_bytes(bytes(data))
    truncated = _checkpoint(tmp_path, 3, 5)
    with open(truncated, "r+b") as f:
        f.truncate(10)
    bare = _checkpoint(tmp_path, 4, 5, with_manifest=False)
    for path, needle in ((flipped, "sha256 differs"), (truncated, "partial"), (bare, "manifest is missing"),
                         (tmp_path / mf.ckpt_name(9, 5), "manifest is missing")):
        proc = _run_verify(path)
        assert proc.returncode == 1 and proc.stdout == "", proc.stdout
        assert proc.stderr.startswith("not complete: ") and str(path) in proc.stderr and needle in proc.stderr
