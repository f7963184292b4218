"""The resume choice as the supervisor makes it: newest checkpoint complete everywhere, and why not newer."""
from launcher.resume import CheckpointInfo, Skipped, decide_resume, parse_skipped


def ck(host, epoch, steps=10):
    return CheckpointInfo(path=f"/{host}/ckpt/refinenet-{epoch}_{steps}.ckpt", epoch=epoch, step=steps,
                          global_step=epoch * steps)


def test_a_refused_newest_checkpoint_falls_back_and_says_why():
    stderr = ("/b/ckpt: note\n"
              "skipped /b/ckpt/refinenet-3_10.ckpt: size is 5 bytes, the manifest says 9\n"
              "skipped /b/ckpt/refinenet-0_10.ckpt: manifest is missing\n")
    skipped = parse_skipped("b", stderr)
    assert skipped[0] == Skipped("b", "/b/ckpt/refinenet-3_10.ckpt", "size is 5 bytes, the manifest says 9")
    choice = decide_resume({"a": [ck("a", 3), ck("a", 2)], "b": [ck("b", 2)]}, skipped)
    assert choice.point.name == "refinenet-2_10.ckpt"
    assert choice.passed_over == ("refinenet-3_10.ckpt on b: size is 5 bytes, the manifest says 9",)
    assert choice.describe() == ("refinenet-2_10.ckpt (epoch 2, global step 20); not used: "
                                 "refinenet-3_10.ckpt on b: size is 5 bytes, the manifest says 9")


def test_a_checkpoint_missing_on_a_host_is_named_and_older_refusals_are_not():
    choice = decide_resume({"a": [ck("a", 2), ck("a", 1)], "b": [ck("b", 1)]},
                           [Skipped("a", "/a/ckpt/refinenet-0_10.ckpt", "manifest is missing")])
    assert choice.point.epoch == 1
    assert choice.passed_over == ("refinenet-2_10.ckpt: missing on b (complete on a)",)


def test_nothing_in_common_starts_over_and_nothing_newer_is_silent():
    assert decide_resume({"a": [ck("a", 1)], "b": []}).point is None
    assert decide_resume({"a": [ck("a", 1)], "b": []}).describe() == ""
    assert decide_resume({"a": [ck("a", 1)], "b": [ck("b", 1)]}).passed_over == ()
