"""Command lines of refinenet-export, refinenet-infer-onnx and refinenet-predict: help, argument checks."""
import subprocess
import sys
from pathlib import Path

import pytest

from refinenet import export, infer_onnx

SCRIPTS = {"refinenet-export": "refinenet.export", "refinenet-infer-onnx": "refinenet.infer_onnx",
           "refinenet-predict": "refinenet.predict"}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_of_console_script_and_module(script, child_env):
    console = Path(sys.executable).parent / script
    for argv in ([str(console), "--help"], [sys.executable, "-m", SCRIPTS[script], "--help"]):
        proc = subprocess.run(argv, capture_output=True, text=True, env=child_env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert f"usage: {script}" in proc.stdout


def test_output_path_adds_the_suffix_once():
    assert export.output_path("out/refinenet", "ONNX") == Path("out/refinenet.onnx")
    assert export.output_path("out/model.onnx", "ONNX") == Path("out/model.onnx")
    assert export.output_path("out/model.v2", "MINDIR") == Path("out/model.v2.mindir")


def test_spec_defaults_to_one_513_image(tmp_path):
    args = export.build_parser().parse_args(["--ckpt", "x.ckpt", "--format", "onnx",
                                             "--output", str(tmp_path / "m")])
    spec = export.spec_from_args(args)
    assert spec.input_shape == (1, 3, 513, 513)
    assert spec.file_format == "ONNX" and spec.depth == 101 and spec.num_classes == 21
    assert spec.output == tmp_path / "m.onnx"


@pytest.mark.parametrize("argv, words", [
    (["--crop-size", "65", "--height", "33", "--width", "33"], "not both"),
    (["--batch-size", "0"], "--batch-size"),
    (["--format", "AIR", "--verify"], "--verify"),
    (["--tolerance", "0"], "--tolerance"),
])
def test_spec_rejects_bad_values(tmp_path, argv, words):
    args = export.build_parser().parse_args(["--ckpt", "x.ckpt", "--output", str(tmp_path / "m"), *argv])
    with pytest.raises(export.UsageError, match=words):
        export.spec_from_args(args)


def test_output_into_a_directory_is_refused(tmp_path):
    (tmp_path / "m.mindir").mkdir()
    assert export.main(["--ckpt", "x.ckpt", "--output", str(tmp_path / "m")]) == 2


def test_infer_onnx_refuses_missing_and_invalid_models(tmp_path, capsys):
    image, label = tmp_path / "a.png", tmp_path / "a_label.png"
    image.write_bytes(b"")
    label.write_bytes(b"")
    data_list = tmp_path / "list.txt"
    data_list.write_text(f"{image} {label}\n")
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not a model")
    assert infer_onnx.main(["--onnx", str(tmp_path / "absent.onnx"), "--data-lst", str(data_list)]) == 2
    assert "absent.onnx" in capsys.readouterr().err
    assert infer_onnx.main(["--onnx", str(bogus), "--data-lst", str(data_list)]) == 2
    assert "bogus.onnx cannot be loaded" in capsys.readouterr().err
    assert infer_onnx.main(["--onnx", str(bogus), "--data-lst", str(tmp_path / "none.txt")]) == 2
    assert "--data-lst" in capsys.readouterr().err
