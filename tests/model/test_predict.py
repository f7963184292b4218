"""refinenet-predict refuses bad input before writing anything (the runs themselves: test_export.py)."""
import cv2
import numpy as np
import pytest

from refinenet import predict


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "in" / "photo.jpg"
    path.parent.mkdir()
    cv2.imwrite(str(path), np.full((20, 30, 3), 128, np.uint8))
    return path


def test_a_model_is_required(image, tmp_path):
    with pytest.raises(SystemExit) as exc:
        predict.main([str(image), "-o", str(tmp_path / "out")])
    assert exc.value.code == 2


@pytest.mark.parametrize("extra, words", [
    (["{missing}"], "missing.png is missing or not a readable image"),
    (["{dup}"], "both be written as photo.png"),
    (["--alpha", "2"], "--alpha"),
    (["--crop-size", "0"], "--crop-size"),
])
def test_bad_input_exits_2_and_writes_nothing(image, tmp_path, capsys, extra, words):
    dup = tmp_path / "other" / "photo.png"
    dup.parent.mkdir()
    cv2.imwrite(str(dup), np.zeros((5, 5, 3), np.uint8))
    fill = {"missing": tmp_path / "missing.png", "dup": dup}
    out = tmp_path / "out"
    argv = [str(image), *[e.format(**fill) for e in extra], "--ckpt", str(tmp_path / "absent.ckpt"),
            "-o", str(out)]
    assert predict.main(argv) == 2
    assert words in capsys.readouterr().err
    assert not out.exists()


def test_missing_checkpoint_is_named(image, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict.main([str(image), "--ckpt", str(tmp_path / "absent.ckpt"), "-o", str(out)]) == 2
    assert "absent.ckpt" in capsys.readouterr().err
    assert not out.exists()


def test_output_dir_that_is_a_file_is_refused(image, tmp_path, capsys):
    (tmp_path / "out").write_text("")
    assert predict.main([str(image), "--onnx", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out")]) == 2
    assert "--output-dir" in capsys.readouterr().err
