"""Record what the real POT 2023.3 DefaultQuantization does on the test models (tests/models.py).

Writes one JSON file per case to tests/data/pot/: the params, how the data was made, the FakeQuantize
dump of the shared reference runner (levels, il/ih/ol/oh, producer, consumers) and, for every FQ, the
consumer edges it feeds, each mapped to a torch op key ``[module path, op type, occurrence]`` that
tests/graph/test_pot_parity.py can find again in the graph torchpqt captures.

Run it with the normal Python (torch, onnx) of the repository; it calls POT's interpreter for the POT
part only:

    POT_PYTHON=<pot-venv>/bin/python python tests/pot_parity/make_pot_goldens.py [CASE_ID ...]

Options (or environment variables):
    --pot-python / POT_PYTHON        interpreter with openvino-dev==2023.3.0 (required)
    --pot-reference / POT_REFERENCE  the shared runner pot_reference.py
                                     (default: ../shared/tools/pot_reference/pot_reference.py,
                                     relative to the repository root)
    --out                            output folder (default: tests/data/pot)
    --list                           print the case ids and exit

Pipeline per case: build the seeded model, take ``calibration_data(model, n)``, export the FP32 model with
``torch.onnx.export(dynamo=False, opset_version=13)`` (opset 13: OpenVINO 2023.3 turns the exported
LayerNorm into MVN→Multiply→Add and the erf GELU into Gelu, as spec §0.1 describes; opset 17's
LayerNormalization would be spelled out op by op; the hardswish probe uses opset 14, see OPSET_OF), save
the data as npz keyed by ONNX input names (a tuple sample gives one array per input), run
pot_reference.py through pot_f32.py (FP32 CPU inference, see there), and parse the saved quantized IR for
the exact consumer ports.

POT's ``ignored.scope`` names IR nodes; for such cases TORCHPQT_PARAMS holds the same params spelled with
torch module paths, recorded as ``torchpqt_params`` next to ``params``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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

import models
from pot_keys import assign_keys, leaf_modules, norm_type

OPSET = 13
# hardswish: opset 14's HardSwish becomes OpenVINO HSwish, what OpenVINO makes of aten::hardswish; opset 13
# spells it x * HardSigmoid(x), which no converter path of a torch model produces
OPSET_OF = {"hardswish": 14}
N_SAMPLES = 12  # calibration_data(model, N_SAMPLES); stat_subset_size picks the first 10
BASE = {"target_device": "CPU", "preset": "performance", "stat_subset_size": 10}

_SKIP_TYPES = {"Const", "Parameter", "Result", "FakeQuantize"}
_WEIGHTED_OV = {"Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData",
                "MatMul"}
_WEIGHTED_ONNX = {"Conv", "ConvTranspose", "Gemm", "MatMul"}

def _params(**over) -> dict:
    return {**BASE, **over}


def cases() -> dict[str, tuple[str, dict]]:
    """case id -> (model name, POT params)."""
    out: dict[str, tuple[str, dict]] = {}
    for model in ("tiny_cnn", "small_transformer"):
        out[f"{model}-cpu-performance"] = (model, _params())
        out[f"{model}-cpu-mixed"] = (model, _params(preset="mixed"))
        out[f"{model}-any-performance"] = (model, _params(target_device="ANY"))
        out[f"{model}-gpu-performance"] = (model, _params(target_device="GPU"))
    out["small_transformer-cpu-transformer-performance"] = (
        "small_transformer", _params(model_type="transformer"))
    out["small_transformer-cpu-transformer-mixed"] = (
        "small_transformer", _params(model_type="transformer", preset="mixed"))
    out["tiny_cnn-cpu-performance-quantile"] = ("tiny_cnn", _params(range_estimator={"preset": "quantile"}))
    out["tiny_cnn-cpu-mixed-quantile"] = (
        "tiny_cnn", _params(preset="mixed", range_estimator={"preset": "quantile"}))
    # inplace_statistics only changes numbers with stat_batch_size > 1 (spec §6): per-batch extremes
    out["tiny_cnn-cpu-performance-batch2"] = ("tiny_cnn", _params(stat_batch_size=2))
    out["tiny_cnn-cpu-performance-batch2-inplace"] = (
        "tiny_cnn", _params(stat_batch_size=2, inplace_statistics=True))
    for model in ("concat_conv", "eltwise_const", "const_fusion", "preproc_scale_shift", "preproc_sub_mul",
                  "matmul_const", "conv_transpose", "grouped_conv"):
        out[f"{model}-cpu-performance"] = (model, _params())
    out["concat_conv-cpu-mixed"] = ("concat_conv", _params(preset="mixed"))
    # GNA targets: apply_pot_transformations at load, `outputs` FQs, Result-input FQs, OverflowCorrection
    for model in ("tiny_cnn", "small_transformer", "act_eltwise"):
        for device in ("GNA", "GNA3"):
            out[f"{model}-{device.lower()}-performance"] = (model, _params(target_device=device))
    # HuggingFace BERT (two int64 inputs, padding in the attention mask)
    out["tiny_bert-cpu-performance"] = ("tiny_bert", _params())
    out["tiny_bert-cpu-mixed"] = ("tiny_bert", _params(preset="mixed"))
    out["tiny_bert-cpu-transformer-performance"] = ("tiny_bert", _params(model_type="transformer"))
    out["tiny_bert-cpu-transformer-mixed"] = ("tiny_bert", _params(model_type="transformer", preset="mixed"))
    for model in ("act_eltwise", "mobilenet_block", "hardswish", "grouped_conv_transpose", "upsample_conv",
                  "concat3_pool"):
        out[f"{model}-cpu-performance"] = (model, _params())
    out["concat3_pool-cpu-mixed"] = ("concat3_pool", _params(preset="mixed"))
    # bag-of-words text classifiers: embedding -> pooling over tokens -> linear. POT 2023.3 fails on
    # Gather -> ReduceMean (bow_mean, bow_mean_ln: "does not have a suitable configuration") and on the
    # ONNX Loop of EmbeddingBag (bow_bag); bow_mean_tokens is POT placing the FQ where torchpqt does
    out["bow_sum-cpu-performance"] = ("bow_sum", _params())
    out["bow_mean_tokens-cpu-performance"] = ("bow_mean_tokens", _params())
    out["bow_mean_tokens-cpu-mixed"] = ("bow_mean_tokens", _params(preset="mixed"))
    # `ignored`: POT scope names are IR names; TORCHPQT_PARAMS gives the torch-side spelling
    out["mobilenet_block-cpu-performance-ignored"] = ("mobilenet_block", _params(ignored={
        "scope": [_IGNORED_SCOPE_IR],
        "operations": [{"type": "Convolution", "attributes": {"strides": [2, 2]}}]}))
    return out


# POT IR name of mobilenet_block's 1x1 conv (BatchNorm folded in) and its torch module path
_IGNORED_SCOPE_IR, _IGNORED_SCOPE_TORCH = "/pw/pw.0/Conv/WithoutBiases", "pw.0"

# case id -> the params torchpqt gets where they differ from POT's (scope names are module paths there)
TORCHPQT_PARAMS = {
    "mobilenet_block-cpu-performance-ignored": _params(ignored={
        "scope": [_IGNORED_SCOPE_TORCH],
        "operations": [{"type": "Convolution", "attributes": {"strides": [2, 2]}}]}),
}


# --- ONNX side ----------------------------------------------------------------------------------------


def input_names(model_name: str) -> list[str]:
    kind = models.MODELS[model_name][1][0]
    return {"ids": ["input_ids"], "ids+mask": ["input_ids", "attention_mask"]}.get(kind, ["input"])


def _as_tuple(sample) -> tuple:
    return sample if isinstance(sample, tuple) else (sample,)


def export_onnx(model_name: str, path: Path, dynamic_batch: bool = False) -> None:
    """Static shapes of one sample, or a dynamic batch axis where POT stacks samples (stat_batch_size > 1).
    Outputs are named ``output``, ``output_1``, ... (one per model output)."""
    model = models.build(model_name)
    example = _as_tuple(models.example_input(model_name))
    names = input_names(model_name)
    with torch.no_grad():
        n_out = len(_as_tuple(model(*example)))
    outputs = ["output"] + [f"output_{i}" for i in range(1, n_out)]
    axes = {n: {0: "batch"} for n in [*names, *outputs]} if dynamic_batch else None
    with torch.no_grad():
        torch.onnx.export(model, example, str(path), dynamo=False,
                          opset_version=OPSET_OF.get(model_name, OPSET),
                          input_names=names, output_names=outputs, dynamic_axes=axes)


def module_of(onnx_name: str, modules: set[str]) -> str:
    """``/stem/stem.0/Conv`` -> ``stem.0``; ``/attn/q/MatMul`` -> ``attn.q``; ``/Add`` -> ``''``.

    The TorchScript exporter writes one scope per module level, sometimes relative (``q``), sometimes the
    full dotted path (``stem.0``, for Sequential children)."""
    parts = [p for p in onnx_name.split("/") if p][:-1]
    path = ""
    for p in parts:
        cand = p if (not path or p.startswith(path + ".")) else f"{path}.{p}"
        if cand in modules:
            path = cand
    return path


def onnx_nodes(path: Path, model_name: str) -> tuple[list[dict], list[str]]:
    """The ONNX nodes (name, op type, torch module, input/output tensors) and the graph output names."""
    import onnx

    modules = {n for n, _ in models.build(model_name).named_modules() if n}
    graph = onnx.load(str(path)).graph
    return ([{"name": n.name, "op_type": n.op_type, "module": module_of(n.name, modules),
              "inputs": list(n.input), "outputs": list(n.output)} for n in graph.node],
            [o.name for o in graph.output])


# --- IR side ------------------------------------------------------------------------------------------


def read_ir(xml_path: Path) -> tuple[dict, list]:
    """layers {id: (name, type)} and edges [(from_id, to_id, to_port)] of an IR; to_port counts inputs."""
    root = ET.parse(xml_path).getroot()
    layers = {lay.get("id"): (lay.get("name"), lay.get("type")) for lay in root.iter("layer")}
    inputs_of = {lay.get("id"): [p.get("id") for p in lay.findall("./input/port")]
                 for lay in root.iter("layer")}
    edges = []
    for e in root.iter("edge"):
        to, port = e.get("to-layer"), e.get("to-port")
        edges.append((e.get("from-layer"), to, inputs_of[to].index(port)))
    return layers, edges


def ov_keys(layers: dict, edges: list, nodes: list[dict], leaves: dict[str, str],
            outputs: list[str]) -> dict[str, dict]:
    """Map each IR op (by name) to its ONNX node and a torch op key (tests/pot_parity/pot_keys.py).

    OpenVINO names an op after its ONNX node (``/res_a/Conv/WithoutBiases`` for the bias-less part of
    a Conv) or after the ONNX output tensor (``output``; ``output/pre_fq_input`` once POT put an FQ
    between it and the Result); ops the converter creates itself get generated names
    (``ConvolutionBackpropData_2349``, ``Multiply_1226``) and are mapped, when they feed a bias Add, to
    that Add's ONNX node; a generated Multiply feeding one MatMul (the attention scale the converter
    moves onto K, spec §0.1) is keyed as a Multiply of that MatMul's module; other generated ops have no
    torch counterpart (key None). The Result of ONNX output ``outputs[i]`` (``output/sink_port_0``) is
    ``["<output>", i]``."""
    by_name = {n["name"]: i for i, n in enumerate(nodes)}
    by_output = {o: i for i, n in enumerate(nodes) for o in n["outputs"]}
    consumers: dict[str, list[str]] = {}
    input0: dict[str, str] = {}
    for src, dst, port in edges:
        consumers.setdefault(src, []).append(dst)
        if port == 0:
            input0[dst] = src

    def direct(name: str) -> int | None:
        for cand in (name, name.removesuffix("/WithoutBiases"), name.removesuffix("/pre_fq_input")):
            if cand in by_name:
                return by_name[cand]
            if cand in by_output:
                return by_output[cand]
        return None

    producer_of = {o: i for i, n in enumerate(nodes) for o in n["outputs"]}

    def weighted_upstream(i: int | None) -> int | None:
        """The ONNX Conv/Gemm/MatMul a bias Add stands for: itself, or the one reached upward through
        eltwise-with-constant nodes the converter folded into it (``conv(x) * gain``)."""
        while i is not None:
            if nodes[i]["op_type"] in _WEIGHTED_ONNX:
                return i
            if nodes[i]["op_type"] not in ("Mul", "Add", "Sub", "Div"):
                return None
            i = producer_of.get(nodes[i]["inputs"][0])
        return None

    onnx_idx = {lid: direct(name) for lid, (name, _) in layers.items()}
    for lid, (name, t) in layers.items():
        if onnx_idx[lid] is None and t in _WEIGHTED_OV:
            # a weighted op with a generated name: name it after the ONNX op its bias Add stands for
            outs = consumers.get(lid, [])
            if len(outs) == 1 and layers[outs[0]][1] == "Add" and onnx_idx[outs[0]] is not None:
                onnx_idx[lid] = weighted_upstream(onnx_idx[outs[0]])

    def real_consumers(lid: str) -> list[str]:
        """Consumers of ``lid``, looking through the FQs POT inserted."""
        out = []
        for c in consumers.get(lid, []):
            out += real_consumers(c) if layers[c][1] == "FakeQuantize" else [c]
        return out

    scale_of: dict[str, str] = {}  # generated Multiply -> the MatMul it feeds
    for lid, (name, t) in layers.items():
        if onnx_idx[lid] is None and t == "Multiply":
            outs = set(real_consumers(lid))
            if len(outs) == 1 and layers[next(iter(outs))][1] == "MatMul":
                mm = next(iter(outs))
                if onnx_idx[mm] is not None:
                    onnx_idx[lid], scale_of[lid] = onnx_idx[mm], mm
    for dst, src in list(input0.items()):
        while layers[src][1] == "FakeQuantize" and src in input0:
            src = input0[src]  # look through the FQs POT inserted
        input0[dst] = src
    params = sorted((int(lid) for lid, (_, t) in layers.items() if t == "Parameter"))
    ops = [lid for lid, (_, t) in layers.items() if t not in _SKIP_TYPES or t == "Parameter"]
    # execution order: ONNX node order; a moved attention scale runs just before its MatMul
    order = sorted(ops, key=lambda lid: (onnx_idx[lid] if onnx_idx[lid] is not None else -1,
                                         lid not in scale_of, int(lid)))
    key_of = assign_keys(
        order,
        module_of=lambda lid: nodes[onnx_idx[lid]]["module"] if onnx_idx[lid] is not None else None,
        type_of=lambda lid: norm_type(layers[lid][1]),
        input0_of=lambda lid: input0.get(lid),
        is_input=lambda lid: params.index(int(lid)) if layers[lid][1] == "Parameter" else None,
        leaves=leaves)
    for lid, (name, t) in layers.items():
        if t == "Result" and name.removesuffix("/sink_port_0") in outputs:
            key_of[lid] = ["<output>", outputs.index(name.removesuffix("/sink_port_0"))]

    def onnx_name(lid):
        return nodes[onnx_idx[lid]]["name"] if onnx_idx[lid] is not None and lid not in scale_of else None

    return {name: {"type": t, "onnx_node": onnx_name(lid), "key": key_of.get(lid)}
            for lid, (name, t) in layers.items() if lid in key_of}


def fq_edges(dump: dict, layers: dict, edges: list, ov: dict) -> None:
    """Add to each FQ of ``dump`` its producer key and the consumer edges it feeds (OV op name, type,
    input port, torch key). POT's own consumer list decides which ops; the IR gives the ports (a weights
    FQ of a depthwise conv feeds a Reshape in the saved IR: its port comes from the FQ name)."""
    by_name = {name: lid for lid, (name, _) in layers.items()}
    ports: dict[tuple[str, str], list[int]] = {}
    for src, dst, port in edges:
        ports.setdefault((layers[src][0], layers[dst][0]), []).append(port)
    for fq_name, rec in dump.items():
        out = []
        for c in rec["consumers"]:
            cname, ctype = c.rsplit(":", 1)
            found = ports.get((fq_name, cname))
            if not found and fq_name.startswith(cname + "/fq_"):
                found = [int(fq_name.rsplit("_", 1)[1])]
            for port in found or [None]:
                info = ov.get(cname, {})
                out.append({"consumer": cname, "type": info.get("type", ctype), "port": port,
                            "key": info.get("key")})
        rec["edges"] = sorted(out, key=lambda e: (e["consumer"], e["port"] if e["port"] is not None else -1))
        pname = rec["producer"].rsplit(":", 1)[0]
        rec["producer_key"] = None if rec["weights"] else ov.get(pname, {}).get("key")
        assert pname in by_name or rec["weights"], pname


# --- one case -----------------------------------------------------------------------------------------


def run_tool(case_id: str, cmd: list[str]) -> None:
    """Run one command of POT's interpreter; its output tail in the error if it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{case_id}: POT failed\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def run_pot(case_id: str, model_name: str, params: dict, pot_python: str, pot_reference: str, tmp: Path,
            dynamic_batch: bool = False) -> tuple[list[str], list[dict], dict, dict]:
    """Export ``tmp/model.onnx``, save the calibration data and params, run pot_reference.py through
    pot_f32.py (the quantized IR saved to ``tmp/ir/pot_quantized.xml``) and key its FakeQuantize dump.

    Returns the ONNX input names, the ONNX nodes (:func:`onnx_nodes`), the dump (each FQ with its consumer
    edges, see :func:`fq_edges`) and the IR op name -> torch key map (:func:`ov_keys`) of the quantized IR."""
    onnx_path = tmp / "model.onnx"
    export_onnx(model_name, onnx_path, dynamic_batch)
    data = models.calibration_data(model_name, N_SAMPLES)
    names = input_names(model_name)
    columns = list(zip(*(_as_tuple(x) for x in data)))
    np.savez(tmp / "data.npz", **{name: torch.cat(col).numpy() for name, col in zip(names, columns)})
    (tmp / "params.json").write_text(json.dumps(params))
    run_tool(case_id, [pot_python, str(HERE / "pot_f32.py"), pot_reference, str(onnx_path), str(tmp / "data.npz"),
                       str(tmp / "params.json"), str(tmp / "dump.json"), "--save-ir", str(tmp / "ir")])
    dump = json.loads((tmp / "dump.json").read_text())
    nodes, outputs = onnx_nodes(onnx_path, model_name)
    layers, edges = read_ir(tmp / "ir" / "pot_quantized.xml")
    ov = ov_keys(layers, edges, nodes, leaf_modules(models.build(model_name)), outputs)
    fq_edges(dump, layers, edges, ov)
    return names, nodes, dump, ov


def data_record(names: list[str]) -> dict:
    return {"source": "tests/models.py calibration_data(model, n, seed=0)", "n": N_SAMPLES, "seed": 0,
            "npz_keys": names}


def run_case(case_id: str, model_name: str, params: dict, pot_python: str, pot_reference: str,
             out_dir: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        dynamic_batch = params.get("stat_batch_size", 1) > 1
        names, nodes, dump, ov = run_pot(case_id, model_name, params, pot_python, pot_reference, Path(tmp),
                                         dynamic_batch)
    used = {e["consumer"] for rec in dump.values() for e in rec["edges"]}
    used |= {rec["producer"].rsplit(":", 1)[0] for rec in dump.values()}
    record = {
        "case": case_id,
        "model": model_name,
        "params": params,
        "data": data_record(names),
        "onnx": {"exporter": "torch.onnx.export(dynamo=False)", "opset": OPSET_OF.get(model_name, OPSET),
                 "torch": torch.__version__,
                 "dynamic_batch": dynamic_batch},
        "pot": {"version": "openvino-dev 2023.3.0", "runner": "shared/tools/pot_reference/pot_reference.py",
                "inference_precision": "f32 (tests/pot_parity/pot_f32.py)"},
        "key_format": "tests/pot_parity/pot_keys.py",
        "ov_nodes": {k: v for k, v in ov.items() if k in used},
        "onnx_nodes": [[n["name"], n["op_type"], n["module"]] for n in nodes if n["op_type"] != "Constant"],
        "fake_quantize": dump,
    }
    if case_id in TORCHPQT_PARAMS:
        record = {**record, "torchpqt_params": TORCHPQT_PARAMS[case_id]}
        record = {k: record[k] for k in ("case", "model", "params", "torchpqt_params", *record)}
    path = out_dir / f"{case_id}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def golden_main(argv, description: str, default_out: Path, table: dict[str, tuple[str, dict]], run_case,
                describe) -> int:
    """The command line both golden makers share: case ids, POT's interpreter and runner, the output folder;
    ``run_case(case_id, model, params, pot_python, pot_reference, out_dir) -> path``, ``describe(path)`` the
    line printed after each case."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("cases", nargs="*", help="case ids (default: all)")
    ap.add_argument("--pot-python", default=os.environ.get("POT_PYTHON"))
    ap.add_argument("--pot-reference", default=os.environ.get(
        "POT_REFERENCE", str(REPO.parent / "shared" / "tools" / "pot_reference" / "pot_reference.py")))
    ap.add_argument("--out", default=str(default_out))
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(table))
        return 0
    if not args.pot_python:
        ap.error("give the POT 2023.3 interpreter with --pot-python or POT_PYTHON")
    if not Path(args.pot_reference).is_file():
        ap.error(f"pot_reference.py not found at {args.pot_reference}; pass --pot-reference")
    unknown = [c for c in args.cases if c not in table]
    if unknown:
        ap.error(f"unknown case ids {unknown}; see --list")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for case_id in args.cases or table:
        model_name, params = table[case_id]
        path = run_case(case_id, model_name, params, args.pot_python, args.pot_reference, out_dir)
        print(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}: {describe(path)}")
    return 0


def main(argv=None) -> int:
    return golden_main(argv, __doc__.split("\n")[0], TESTS / "data" / "pot", cases(), run_case,
                       lambda path: f"{len(json.loads(path.read_text())['fake_quantize'])} FakeQuantize")


if __name__ == "__main__":
    sys.exit(main())
