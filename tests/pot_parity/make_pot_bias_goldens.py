"""Record the weights and biases the real POT 2023.3 DefaultQuantization leaves in the model: after
ActivationChannelAlignment, the saturation fix and FastBiasCorrection (POT's default params) or
BiasCorrection (``use_fast_bias: false``).

Writes one JSON file per case to tests/data/pot/biases/ (a subfolder: tests/graph/test_pot_parity.py
reads only the files directly in tests/data/pot/). Each holds what make_pot_goldens.py records (params,
data recipe, the FakeQuantize dump with torch op keys) plus ``layers``: for every Convolution /
GroupConvolution / MatMul with a constant weight, keyed by its IR op name,

* ``key`` / ``module``: the torch op key (tests/pot_parity/pot_keys.py) and module path;
* ``weight_fp32`` / ``weight_pot``: the constant before the op (FP32 IR) and before its weight
  FakeQuantize in POT's saved IR (channel-aligned, ``W/2`` under the saturation fix), shape ``weight_shape``;
* ``bias_fp32`` / ``bias_pot``: the constant of the bias ``Add`` after the op (``bias_add``), flattened;
  ``bias_fp32`` is null where the converted model had no bias Add (POT inserts a zero one for a
  Convolution, named ``<op>/add_``);
* ``summary``: the largest absolute and relative bias change, and what happened to the weights
  (``unchanged``, ``halved`` by the saturation fix, or ``aligned``).

Values are float32 written with 9 significant digits (exact round trip). Run it like make_pot_goldens.py:

    POT_PYTHON=<pot-venv>/bin/python python tests/pot_parity/make_pot_bias_goldens.py [CASE_ID ...]

The FP32 IR is the one POT's runner loads: the same ONNX file converted by the POT interpreter's
OpenVINO (``openvino.convert_model``), so IR op names agree.
"""

from __future__ import annotations

import json
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
REPO = TESTS.parent
sys.path[:0] = [str(TESTS), str(HERE)]

from make_pot_goldens import BASE, OPSET, OPSET_OF, data_record, golden_main, run_pot, run_tool

MODELS = ("tiny_cnn", "mobilenet_block", "align_chain", "padded_convs", "zero_bias", "small_transformer",
          "feature_transformer")
# POT 2023.3's BiasCorrection crashes on small_transformer (its first MatMuls read a Gather: "The data type
# for out port 0 of node /embed/Gather/parameter is not defined"); feature_transformer is the same block
# without the embedding.
NO_BIAS_CORRECTION = ("small_transformer",)
_WEIGHTED = {"Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData",
             "GroupConvolutionBackpropData"}
_DTYPES = {"f32": np.float32, "f16": np.float16, "f64": np.float64, "i64": np.int64, "i32": np.int32,
           "i8": np.int8, "u8": np.uint8}
_CONVERT = "import sys, openvino as ov; ov.serialize(ov.convert_model(sys.argv[1]), sys.argv[2])"


def cases() -> dict[str, tuple[str, dict]]:
    """case id -> (model, POT params): POT's defaults, and BiasCorrection instead of the fast one."""
    out = {}
    for model in MODELS:
        out[f"{model}-cpu-default"] = (model, dict(BASE))
        if model not in NO_BIAS_CORRECTION:
            out[f"{model}-cpu-biascorrection"] = (model, {**BASE, "use_fast_bias": False})
    return out


# --- IR constants -------------------------------------------------------------------------------------


class IR:
    """Layers, edges and constant values of an OpenVINO IR (xml + bin), without OpenVINO."""

    def __init__(self, xml: Path):
        root = ET.parse(xml).getroot()
        self.blob = xml.with_suffix(".bin").read_bytes()
        self.layers = {lay.get("id"): lay for lay in root.iter("layer")}
        self.by_name = {lay.get("name"): lid for lid, lay in self.layers.items()}
        ports = {lid: [p.get("id") for p in lay.findall("./input/port")] for lid, lay in self.layers.items()}
        self.producer: dict[tuple[str, int], str] = {}
        self.consumers: dict[str, list[str]] = {}
        for e in root.iter("edge"):
            src, dst = e.get("from-layer"), e.get("to-layer")
            self.producer[(dst, ports[dst].index(e.get("to-port")))] = src
            self.consumers.setdefault(src, []).append(dst)

    def type(self, lid: str) -> str:
        return self.layers[lid].get("type")

    def name(self, lid: str) -> str:
        return self.layers[lid].get("name")

    def value(self, lid: str) -> np.ndarray:
        data = self.layers[lid].find("data")
        shape = [int(s) for s in data.get("shape").split(",") if s != ""]
        dtype = _DTYPES[data.get("element_type")]
        offset, size = int(data.get("offset")), int(data.get("size"))
        return np.frombuffer(self.blob[offset:offset + size], dtype=dtype).reshape(shape).astype(np.float32)

    def weight(self, lid: str) -> np.ndarray | None:
        """The Const feeding input 1, through FakeQuantize / Reshape / Convert (input 0)."""
        src = self.producer.get((lid, 1))
        while src is not None and self.type(src) in ("FakeQuantize", "Reshape", "Convert"):
            src = self.producer.get((src, 0))
        return self.value(src) if src is not None and self.type(src) == "Const" else None

    def bias(self, lid: str) -> tuple[str, np.ndarray] | None:
        """(Add name, value) of the bias Add right after the op (POT get_bias_for_node)."""
        outs = self.consumers.get(lid, [])
        if len(outs) != 1 or self.type(outs[0]) != "Add":
            return None
        add = outs[0]
        for port in (0, 1):
            src = self.producer.get((add, port))
            if src is not None and src != lid and self.type(src) == "Const":
                return self.name(add), self.value(src)
        return None


def _floats(a: np.ndarray | None) -> list | None:
    if a is None:
        return None
    return [float(f"{v:.9g}") for v in np.asarray(a, dtype=np.float32).ravel()]


def _weight_change(fp32: np.ndarray, pot: np.ndarray) -> str:
    fp32, pot = fp32.ravel(), pot.ravel()
    if np.array_equal(fp32, pot):
        return "unchanged"
    if np.allclose(pot * 2, fp32, rtol=1e-6, atol=0):
        return "halved"
    return "aligned"


def layer_records(fp32: IR, pot: IR, ov: dict) -> dict[str, dict]:
    out = {}
    for lid, lay in pot.layers.items():
        kind, name = lay.get("type"), lay.get("name")
        if kind not in _WEIGHTED:
            continue
        w_pot = pot.weight(lid)
        if w_pot is None:
            continue  # activation x activation MatMul
        flid = fp32.by_name.get(name)
        w_fp32 = fp32.weight(flid) if flid is not None else None
        if kind == "GroupConvolution":  # IR [G, Cout/G, Cin/G, *k] -> torch [Cout, Cin/G, *k]
            w_pot, w_fp32 = (None if w is None else w.reshape(w.shape[0] * w.shape[1], *w.shape[2:])
                             for w in (w_pot, w_fp32))
        b_pot = pot.bias(lid)
        b_fp32 = fp32.bias(flid) if flid is not None else None
        info = ov.get(name, {})
        key = info.get("key")
        rec = {
            "type": kind, "key": key, "module": key[0] if key else None,
            "weight_shape": list(w_fp32.shape if w_fp32 is not None else w_pot.shape),
            "weight_fp32": _floats(w_fp32), "weight_pot": _floats(w_pot),
            "bias_add": b_pot[0] if b_pot else None,
            "bias_fp32": _floats(b_fp32[1]) if b_fp32 else None,
            "bias_pot": _floats(b_pot[1]) if b_pot else None,
        }
        summary = {"weights": _weight_change(w_fp32, w_pot) if w_fp32 is not None else "unknown"}
        if b_pot is not None:
            before = b_fp32[1].ravel() if b_fp32 else np.zeros(b_pot[1].size, np.float32)
            after = b_pot[1].ravel()
            d = after.astype(np.float64) - before
            summary["bias"] = ("unchanged" if not d.any() else "changed")
            summary["max_abs_shift"] = float(f"{np.abs(d).max():.4g}")
            nz = before != 0
            summary["max_rel_shift"] = float(f"{np.abs(d[nz] / before[nz]).max():.4g}") if nz.any() else None
        rec["summary"] = summary
        out[name] = rec
    return out


# --- one case -----------------------------------------------------------------------------------------


def run_case(case_id: str, model_name: str, params: dict, pot_python: str, pot_reference: str,
             out_dir: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        names, _, dump, ov = run_pot(case_id, model_name, params, pot_python, pot_reference, tmp)
        run_tool(case_id, [pot_python, "-c", _CONVERT, str(tmp / "model.onnx"), str(tmp / "fp32.xml")])
        records = layer_records(IR(tmp / "fp32.xml"), IR(tmp / "ir" / "pot_quantized.xml"), ov)
    record = {
        "case": case_id,
        "model": model_name,
        "params": params,
        "data": data_record(names),
        "onnx": {"exporter": "torch.onnx.export(dynamo=False)", "opset": OPSET_OF.get(model_name, OPSET),
                 "torch": torch.__version__},
        "pot": {"version": "openvino-dev 2023.3.0", "runner": "shared/tools/pot_reference/pot_reference.py",
                "inference_precision": "f32 (tests/pot_parity/pot_f32.py, IELauncher included)"},
        "key_format": "tests/pot_parity/pot_keys.py",
        "alignment_fired": any(r["summary"]["weights"] == "aligned" for r in records.values()),
        "layers": records,
        "fake_quantize": dump,
    }
    path = out_dir / f"{case_id}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def _describe(path: Path) -> str:
    rec = json.loads(path.read_text())
    changed = sum(r["summary"].get("bias") == "changed" for r in rec["layers"].values())
    return (f"{len(rec['layers'])} layers, {changed} biases changed, "
            f"alignment {'fired' if rec['alignment_fired'] else 'did not fire'}")


def main(argv=None) -> int:
    return golden_main(argv, __doc__.split("\n")[0], TESTS / "data" / "pot" / "biases", cases(), run_case,
                       _describe)


if __name__ == "__main__":
    sys.exit(main())
