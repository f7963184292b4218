"""RefineNet-101 at 513x513: the ONNX export computes what the MindSpore network computes."""
import cv2
import mindspore as ms
import numpy as np
import onnxruntime as ort
import pytest

from refinenet import export
from refinenet.evaluation import preprocess_image
from refinenet.model import build_refinenet


@pytest.mark.slow
def test_resnet101_onnx_export_matches_mindspore_at_513(tmp_path, capsys):
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(7)
    net = build_refinenet(num_classes=21, depth=101)
    # Logits of a freshly initialised network are ~0.05; a trained one's are ~10-30, where float32
    # rounding differences are larger. Scale the classifier to that range.
    net.clf_conv.weight.set_data(net.clf_conv.weight * 400.0)
    ckpt = tmp_path / "refinenet101.ckpt"
    ms.save_checkpoint(net, str(ckpt))
    assert export.main(["--ckpt", str(ckpt), "--format", "ONNX", "--output", str(tmp_path / "r101")]) == 0
    assert "input 1x3x513x513" in capsys.readouterr().out
    ckpt.unlink()

    noise = np.random.default_rng(0).integers(0, 256, size=(375, 500, 3), dtype=np.uint8)
    photo = cv2.GaussianBlur(noise, (0, 0), 8)  # smooth regions, like a photo, not pixel noise
    x = preprocess_image(photo, 513)[0][None]
    net.set_train(False)
    expected = net(ms.Tensor(x)).asnumpy()
    del net
    session = ort.InferenceSession(str(tmp_path / "r101.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x})[0]
    assert got.shape == expected.shape == (1, 21, 513, 513)
    diff = float(np.abs(got - expected).max())
    print(f"max abs difference {diff:.3g}, max |logit| {np.abs(expected).max():.3g}")
    assert np.abs(expected).max() > 5.0
    assert diff <= 1e-4
