"""Export a RefineNet checkpoint to MINDIR, ONNX or AIR: `refinenet-export` / `python -m refinenet.export`.

The network is built for the fixed input size, so every bilinear resize is a product with constant
interpolation matrices (ONNX has no ResizeBilinearV2 equivalent that MindSpore can emit). The
checkpoint must fit the network exactly (depth, class count): a missing, extra or mis-shaped tensor
is refused with its name. `--verify` runs the exported file (ONNX Runtime, or MindSpore for MINDIR)
next to the network on a random input and fails when they differ by more than `--tolerance`.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from refinenet import checkpoints as ck
from refinenet.presets import DEVICES

FORMATS = ("MINDIR", "ONNX", "AIR")
SUFFIX = {"MINDIR": ".mindir", "ONNX": ".onnx", "AIR": ".air"}
DEPTHS = (18, 34, 50, 101, 152)
DEVICE_TARGET = {"cpu": "CPU", "gpu": "GPU", "ascend": "Ascend"}
INPUT_NAME, OUTPUT_NAME = "image", "logits"
DEFAULT_TOLERANCE = 1e-4


class UsageError(ValueError):
    """Bad command-line input: exit code 2, nothing written."""


class ExportError(RuntimeError):
    """The exporter or the verification of its output failed: exit code 1."""


@dataclass(frozen=True)
class ExportSpec:
    """One export: the checkpoint reference, the network it must fit, the input shape and the output file."""

    ckpt: str
    file_format: str
    batch_size: int
    height: int
    width: int
    depth: int
    num_classes: int
    device: str
    output: Path
    verify: bool = False
    tolerance: float = DEFAULT_TOLERANCE

    @property
    def input_shape(self):
        return (self.batch_size, 3, self.height, self.width)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="refinenet-export", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint file or latest:DIR")
    p.add_argument("--format", dest="file_format", type=str.upper, default="MINDIR", choices=FORMATS,
                   help="AIR needs the Ascend toolchain and device")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--crop-size", type=int, help="square input size (default 513)")
    p.add_argument("--height", type=int, help="input height (with --width, instead of --crop-size)")
    p.add_argument("--width", type=int, help="input width (with --height)")
    p.add_argument("--depth", type=int, default=101, choices=DEPTHS)
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--device", default="cpu", choices=DEVICES)
    p.add_argument("--output", default="refinenet",
                   help="output prefix: writes PREFIX.mindir / PREFIX.onnx / PREFIX.air")
    p.add_argument("--verify", action="store_true",
                   help="compare the exported model's output with the network's on a random input")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="max abs difference for --verify")
    return p


def output_path(prefix: str, file_format: str) -> Path:
    """PREFIX plus the format's suffix; a prefix that already ends in it is taken as the file name."""
    suffix = SUFFIX[file_format]
    return Path(prefix) if prefix.lower().endswith(suffix) else Path(prefix + suffix)


def spec_from_args(args: argparse.Namespace) -> ExportSpec:
    if args.crop_size is not None and (args.height is not None or args.width is not None):
        raise UsageError("--crop-size: give either --crop-size or --height/--width, not both")
    if (args.height is None) != (args.width is None):
        raise UsageError("--height/--width: give both or neither")
    square = args.crop_size if args.crop_size is not None else 513
    height = args.height if args.height is not None else square
    width = args.width if args.width is not None else square
    for flag, value in (("--batch-size", args.batch_size), ("--num-classes", args.num_classes),
                        ("--height" if args.height is not None else "--crop-size", height),
                        ("--width" if args.width is not None else "--crop-size", width)):
        if value < 1:
            raise UsageError(f"{flag}: must be at least 1, got {value}")
    if not args.tolerance > 0:
        raise UsageError(f"--tolerance: must be positive, got {args.tolerance}")
    if args.verify and args.file_format == "AIR":
        raise UsageError("--verify: AIR files cannot be run here; verify a MINDIR or ONNX export")
    out = output_path(args.output, args.file_format)
    check_writable(out, "--output")
    return ExportSpec(ckpt=args.ckpt, file_format=args.file_format, batch_size=args.batch_size, height=height,
                      width=width, depth=args.depth, num_classes=args.num_classes, device=args.device,
                      output=out, verify=args.verify, tolerance=args.tolerance)


def check_writable(path: Path, flag: str) -> None:
    """The file can be created: not a directory, and its nearest existing parent is writable."""
    if path.is_dir():
        raise UsageError(f"{flag}: {path} is a directory")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag}: {parent} is not a writable directory")


def ascend_available() -> bool:
    import mindspore as ms

    try:
        return bool(ms.hal.is_available("Ascend"))
    except Exception:  # noqa: BLE001  (a backend that cannot be probed is not available)
        return False


def check_device(spec: ExportSpec) -> None:
    """AIR is written by the Ascend graph compiler only; a device this MindSpore lacks is refused up front."""
    import mindspore as ms

    if spec.file_format == "AIR":
        if spec.device != "ascend" or not ascend_available():
            state = "present" if ascend_available() else "absent"
            raise UsageError("--format AIR: needs MindSpore's Ascend backend (CANN toolkit and an Ascend "
                             f"device) and --device ascend; this is --device {spec.device} and the Ascend "
                             f"backend is {state}. Export MINDIR or ONNX instead")
    target = DEVICE_TARGET[spec.device]
    if target != "CPU" and not ms.hal.is_available(target):
        raise UsageError(f"--device {spec.device}: MindSpore here has no usable {target} backend")


def use_device(device: str) -> None:
    """Select MindSpore's device; in a process whose runtime already runs on it, keep it."""
    import mindspore as ms

    target = DEVICE_TARGET[device]
    try:
        ms.set_device(target)
    except RuntimeError:
        current = ms.get_context("device_target")
        if current != target:
            raise UsageError(f"--device {device}: this process already runs MindSpore on {current}") from None


def load_network(spec: ExportSpec, ckpt_path: Path):
    """The fixed-size network with every tensor from the checkpoint, in inference mode."""
    from refinenet import weights
    from refinenet.model import build_refinenet

    net = build_refinenet(num_classes=spec.num_classes, depth=spec.depth, bn_mode="frozen",
                          input_size=(spec.height, spec.width))
    report = weights.load_into(net, ckpt_path, kind="refinenet", strict_shapes=False)
    try:
        report.require_exact()
    except weights.CheckpointLoadError as exc:
        raise weights.CheckpointLoadError(exc.path, exc.tensor,
                                          f"{exc.problem}; the network is a depth-{spec.depth} RefineNet "
                                          f"with {spec.num_classes} classes") from None
    net.set_train(False)
    return net, report


def _temporary(final: Path) -> Path:
    return final.with_name(f".tmp-{os.getpid()}-{final.name}")


def export_network(net, spec: ExportSpec) -> Path:
    """Write the export next to its final name and move it into place when complete."""
    import mindspore as ms

    final = spec.output
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(final)
    dummy = ms.Tensor(np.zeros(spec.input_shape, np.float32))
    try:
        if spec.file_format == "ONNX":
            ms.onnx.export(net, dummy, file_name=os.fspath(tmp), input_names=[INPUT_NAME],
                           output_names=[OUTPUT_NAME])
            _finish_onnx(tmp, spec)
        else:
            ms.export(net, dummy, file_name=os.fspath(tmp.with_suffix("")), file_format=spec.file_format)
        if not tmp.is_file():
            raise ExportError(f"MindSpore wrote no {spec.file_format} file for {final}")
        os.replace(tmp, final)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, Exception) and not isinstance(exc, ExportError):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"{spec.file_format} export to {final} failed: {first}") from exc
        raise
    return final


def _finish_onnx(path: Path, spec: ExportSpec) -> None:
    """Check the graph and record what it is (depth, classes, input size) in its metadata."""
    import onnx

    model = onnx.load(os.fspath(path))
    meta = {"refinenet.depth": str(spec.depth), "refinenet.num_classes": str(spec.num_classes),
            "refinenet.input_shape": "x".join(str(d) for d in spec.input_shape),
            "refinenet.checkpoint": os.path.basename(spec.ckpt)}
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, os.fspath(path))


def run_exported(path: Path, file_format: str, x: np.ndarray) -> np.ndarray:
    """The exported model's output for `x`: ONNX Runtime (CPU) or MindSpore's GraphCell."""
    if file_format == "ONNX":
        import onnxruntime as ort

        session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x})[0]
    import mindspore as ms

    cell = ms.nn.GraphCell(ms.load(os.fspath(path)))
    return cell(ms.Tensor(x)).asnumpy()


def max_abs_difference(net, path: Path, file_format: str, shape, seed: int = 0) -> float:
    """Largest |network - exported model| over one standard-normal input of `shape`."""
    import mindspore as ms

    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    expected = net(ms.Tensor(x)).asnumpy()
    got = run_exported(path, file_format, x)
    if got.shape != expected.shape:
        raise ExportError(f"{path}: output shape {got.shape}, the network gives {expected.shape}")
    return float(np.abs(got - expected).max())


def run(spec: ExportSpec) -> Path:
    import mindspore as ms

    check_device(spec)
    from refinenet.weights import resolve_checkpoint

    ckpt_path = resolve_checkpoint(spec.ckpt, what="--ckpt")
    ms.set_context(mode=ms.GRAPH_MODE)
    use_device(spec.device)
    net, report = load_network(spec, ckpt_path)
    print(f"loaded {ckpt_path}: {report.summary()}", flush=True)
    path = export_network(net, spec)
    print(f"wrote {path} ({spec.file_format}, input {'x'.join(map(str, spec.input_shape))}, "
          f"{os.path.getsize(path) / 2**20:.1f} MiB)", flush=True)
    if spec.verify:
        diff = max_abs_difference(net, path, spec.file_format, spec.input_shape)
        print(f"verify: max abs difference {diff:.3g} (tolerance {spec.tolerance:g})", flush=True)
        if not diff <= spec.tolerance:
            raise ExportError(f"{path}: output differs from the network by {diff:.3g} > {spec.tolerance:g}")
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec = spec_from_args(args)
        run(spec)
        return 0
    except (UsageError, ck.CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
