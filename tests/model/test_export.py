"""Export (ONNX, MINDIR) of a small RefineNet and the tools that run exports: ONNX evaluation, prediction.

One depth-18 checkpoint and one 49 px, batch-2 ONNX export are shared by the module.
"""
import json

import cv2
import mindspore as ms
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from refinenet import export, infer_onnx, predict
from refinenet.evaluation import evaluate, load_image_list
from refinenet.model import build_refinenet
from refinenet.palette import palette_bytes
from refinenet.weights import load_into
from tests.harness.model import BATCH, CLASSES, CROP, DEPTH, exported_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return exported_model(tmp_path_factory.mktemp("export"), data_seed=0, net_seed=5, formats=("ONNX",))


def _run_ort(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_onnx_matches_mindspore(setup):
    x = np.random.default_rng(1).standard_normal((BATCH, 3, CROP, CROP)).astype(np.float32)
    expected = setup["net"](ms.Tensor(x)).asnumpy()
    got = _run_ort(setup["onnx"], x)
    assert got.shape == expected.shape == (BATCH, CLASSES, CROP, CROP)
    assert np.abs(got - expected).max() <= 1e-4

    model = onnx.load(str(setup["onnx"]), load_external_data=False)
    ops = {node.op_type for node in model.graph.node}
    assert "MatMul" in ops and not ops & {"Resize", "Upsample"}
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["logits"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["refinenet.depth"] == str(DEPTH) and meta["refinenet.input_shape"] == "2x3x49x49"


def test_mindir_export_from_latest_dir_verifies(setup, capsys):
    prefix = setup["root"] / "out" / "m33x41"
    rc = export.main(["--ckpt", f"latest:{setup['root'] / 'run'}", "--depth", str(DEPTH), "--height", "33",
                      "--width", "41", "--output", str(prefix), "--verify"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert (setup["root"] / "out" / "m33x41.mindir").is_file()
    assert f"loaded {setup['ckpt']}" in out and "verify: max abs difference" in out
    assert not [p for p in (setup["root"] / "out").iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("args, words", [
    (["--ckpt", "{root}/absent.ckpt", "--depth", "18"], ["absent.ckpt", "does not exist"]),
    (["--ckpt", "{ckpt}", "--depth", "34"], ["{ckpt}", "layer1.2.conv1.weight", "depth-34"]),
    (["--ckpt", "{ckpt}", "--depth", "18", "--num-classes", "5"],
     ["{ckpt}", "clf_conv.weight", "(21, 256, 3, 3)"]),
    (["--ckpt", "{ckpt}", "--depth", "18", "--format", "AIR"], ["AIR", "Ascend"]),
    (["--ckpt", "{ckpt}", "--depth", "18", "--crop-size", "0"], ["--crop-size"]),
    (["--ckpt", "{ckpt}", "--depth", "18", "--height", "33"], ["--height/--width"]),
])
def test_export_bad_input_exits_2_and_writes_nothing(setup, capsys, args, words):
    fill = {"root": setup["root"], "ckpt": setup["ckpt"]}
    out_dir = setup["root"] / "bad"
    size = [] if {"--crop-size", "--height"} & set(args) else ["--crop-size", "33"]
    assert export.main([a.format(**fill) for a in args] + size + ["--output", str(out_dir / "m")]) == 2
    err = capsys.readouterr().err
    for word in words:
        assert word.format(**fill) in err, err
    assert not out_dir.exists()


def _mindspore_eval(net, data_list, scales, flip):
    return evaluate(lambda x: net(ms.Tensor(x)).asnumpy(), data_list, batch_size=BATCH, crop_size=CROP,
                    scales=scales, flip=flip, num_classes=CLASSES, progress=False)


def test_infer_onnx_scores_like_mindspore(setup, capsys):
    out = setup["root"] / "infer" / "result.json"
    rc = infer_onnx.main(["--onnx", str(setup["onnx"]), "--data-lst", str(setup["list"]), "--flip",
                          "--output", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    result = json.loads(out.read_text())
    reference = _mindspore_eval(setup["net"], setup["list"], (1.0,), True)
    assert result["images"] == reference.images == 5
    np.testing.assert_array_equal(np.array(result["hist"]), reference.hist)
    assert result["mean_iou"] == pytest.approx(reference.mean_iou, abs=1e-12)
    assert f"mean IoU {reference.mean_iou}" in printed


def test_infer_onnx_multi_scale_takes_one_model_per_scale(setup, capsys):
    small = setup["root"] / "m25.onnx"
    assert export.main(["--ckpt", str(setup["ckpt"]), "--format", "ONNX", "--depth", str(DEPTH),
                        "--crop-size", "25", "--batch-size", str(BATCH), "--output", str(small)]) == 0
    out = setup["root"] / "infer" / "multi.json"
    rc = infer_onnx.main(["--onnx", str(setup["onnx"]), str(small), "--data-lst", str(setup["list"]),
                          "--scales", "1", "0.5", "--output", str(out)])
    assert rc == 0, capsys.readouterr()
    reference = _mindspore_eval(setup["net"], setup["list"], (1.0, 0.5), False)
    np.testing.assert_array_equal(np.array(json.loads(out.read_text())["hist"]), reference.hist)


@pytest.mark.parametrize("extra, words", [
    (["--batch-size", "3"], ["--batch-size 3", "batch size 2"]),
    (["--scales", "1", "0.75"], ["37x37", "one model per scale"]),
    (["--num-classes", "5"], ["--num-classes 5", "21 classes"]),
    (["--crop-size", "65"], ["65x65"]),
])
def test_infer_onnx_mismatch_exits_2(setup, capsys, extra, words):
    out = setup["root"] / "infer" / "never.json"
    assert infer_onnx.main(["--onnx", str(setup["onnx"]), "--data-lst", str(setup["list"]), "--output",
                            str(out), *extra]) == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err, err
    assert not out.exists()


def test_infer_onnx_cuda_provider_only_where_present(setup, capsys):
    rc = infer_onnx.main(["--onnx", str(setup["onnx"]), "--data-lst", str(setup["list"]),
                          "--provider", "cuda"])
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert rc == 0
    else:
        assert rc == 2 and "CUDAExecutionProvider" in capsys.readouterr().err


def test_predict_writes_palette_png_and_overlay(setup, capsys):
    images = [img for img, _ in load_image_list(setup["list"])[:3]]
    onnx_dir, ckpt_dir = setup["root"] / "pred_onnx", setup["root"] / "pred_ckpt"
    assert predict.main([*images, "--onnx", str(setup["onnx"]), "-o", str(onnx_dir)]) == 0
    assert predict.main([*images, "--ckpt", str(setup["ckpt"]), "--depth", str(DEPTH),
                         "--crop-size", str(CROP), "-o", str(ckpt_dir)]) == 0
    capsys.readouterr()
    for image_path in images:
        name = image_path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        image = cv2.imread(image_path)
        with Image.open(onnx_dir / f"{name}.png") as png:
            assert png.mode == "P" and png.size == (image.shape[1], image.shape[0])
            assert png.getpalette()[:63] == palette_bytes()[:63]
            mask = np.array(png)
        assert mask.max() < CLASSES
        with Image.open(ckpt_dir / f"{name}.png") as png:
            np.testing.assert_array_equal(np.array(png), mask)
        with Image.open(onnx_dir / f"{name}_overlay.jpg") as jpg:
            assert jpg.format == "JPEG" and jpg.mode == "RGB" and jpg.size == (image.shape[1], image.shape[0])


def test_loaded_checkpoint_is_the_saved_network(setup):
    """The export fixture's checkpoint reloads into an identical network (what every tool above builds on)."""
    fresh = build_refinenet(num_classes=CLASSES, depth=DEPTH)
    report = load_into(fresh, setup["ckpt"])
    assert report.exact and report.optimizer_state == ("global_step",)
    for a, b in zip(fresh.get_parameters(), setup["net"].get_parameters()):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
