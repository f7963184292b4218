"""MINDIR inference: the exported graph against the network and ONNX Runtime, `refinenet-infer-mindir`
against `refinenet-eval`, and `refinenet-predict --mindir`.

One depth-18 checkpoint with 49 px, batch-2 MINDIR and ONNX exports is shared by the module.
"""
import json

import mindspore as ms
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from refinenet import evaluate, infer_mindir, predict
from refinenet.evaluation import load_image_list
from tests.harness.model import BATCH, CLASSES, CROP, DEPTH, exported_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return exported_model(tmp_path_factory.mktemp("mindir"), data_seed=3, net_seed=11,
                          formats=("MINDIR", "ONNX"))


def test_mindir_matches_the_network_and_onnx_runtime(setup):
    x = np.random.default_rng(2).standard_normal((BATCH, 3, CROP, CROP)).astype(np.float32)
    expected = setup["net"](ms.Tensor(x)).asnumpy()
    model = infer_mindir.open_model(str(setup["mindir"]))
    assert (model.batch, model.size, model.num_classes) == (BATCH, CROP, CLASSES)
    got = model(x)
    session = ort.InferenceSession(str(setup["onnx"]), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert got.shape == expected.shape == onnx_out.shape == (BATCH, CLASSES, CROP, CROP)
    assert np.abs(got - expected).max() <= 1e-5
    assert np.abs(got - onnx_out).max() <= 1e-4


def test_cli_scores_like_refinenet_eval(setup, capsys):
    out_mindir = setup["root"] / "infer" / "mindir.json"
    out_eval = setup["root"] / "infer" / "eval.json"
    rc = infer_mindir.main(["--mindir", str(setup["mindir"]), "--data-lst", str(setup["list"]), "--flip",
                            "--output", str(out_mindir)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert evaluate.main(["--data-lst", str(setup["list"]), "--ckpt", str(setup["ckpt"]), "--depth",
                          str(DEPTH), "--crop-size", str(CROP), "--batch-size", str(BATCH), "--flip",
                          "--output", str(out_eval)]) == 0
    reference = json.loads(out_eval.read_text())
    result = json.loads(out_mindir.read_text())
    assert result["images"] == reference["images"] == 5
    assert result["hist"] == reference["hist"]
    assert result["mean_iou"] == reference["mean_iou"]
    assert result["per_class_iou"] == reference["per_class_iou"]
    assert f"mean IoU {reference['mean_iou']}" in printed and "per-class IoU [" in printed


@pytest.mark.parametrize("extra, words", [
    (["--batch-size", "3"], ["--batch-size 3", "batch size 2", "--format MINDIR"]),
    (["--scales", "1", "0.75"], ["37x37", "one model per scale", "further --mindir"]),
    (["--num-classes", "5"], ["--num-classes 5", "21 classes"]),
    (["--crop-size", "65"], ["65x65"]),
    (["--mindir", "{onnx}"], ["{onnx}", "not a MINDIR file"]),
    (["--mindir", "{root}/absent.mindir"], ["absent.mindir", "does not exist"]),
])
def test_mismatch_exits_2_and_writes_nothing(setup, capsys, extra, words):
    fill = {"root": setup["root"], "onnx": setup["onnx"]}
    out = setup["root"] / "infer" / "never.json"
    model = [] if "--mindir" in extra else ["--mindir", str(setup["mindir"])]
    argv = [*model, "--data-lst", str(setup["list"]), "--output", str(out), *extra]
    assert infer_mindir.main([a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err
    for word in words:
        assert word.format(**fill) in err, err
    assert not out.exists()


def test_predict_with_mindir_matches_onnx(setup, capsys):
    images = [img for img, _ in load_image_list(setup["list"])[:3]]
    mindir_dir, onnx_dir = setup["root"] / "pred_mindir", setup["root"] / "pred_onnx"
    assert predict.main([*images, "--mindir", str(setup["mindir"]), "-o", str(mindir_dir)]) == 0
    assert predict.main([*images, "--onnx", str(setup["onnx"]), "-o", str(onnx_dir)]) == 0
    capsys.readouterr()
    for image_path in images:
        name = image_path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        with Image.open(mindir_dir / f"{name}.png") as a, Image.open(onnx_dir / f"{name}.png") as b:
            assert a.mode == "P"
            np.testing.assert_array_equal(np.array(a), np.array(b))
        assert (mindir_dir / f"{name}_overlay.jpg").is_file()


def test_predict_mindir_crop_size_must_be_the_models(setup, capsys):
    image = load_image_list(setup["list"])[0][0]
    out = setup["root"] / "pred_bad"
    assert predict.main([image, "--mindir", str(setup["mindir"]), "--crop-size", "65", "-o", str(out)]) == 2
    assert "--crop-size 65" in capsys.readouterr().err
    assert not out.exists()
