"""Reproduces the POT reference rows of the hardware tests. Not a test: run it with a Python that has
openvino-dev 2023.3 (POT) installed, e.g. ``<pot-venv>/bin/python tests/hardware/pot_reference.py``.

It calls POT's own selection functions on synthetic FQ -> consumer maps: ``_fake_quantize_to_types``
and ``find_fqs_to_unify`` (which need a real graph) are replaced by the given maps.
"""

from __future__ import annotations

import itertools
import json
import sys


def pot_select(device, preset, fqs, user=None, unify=None, concat=True):
    """fqs: {name: (consumer types, group)}; unify: FQ names unified through one Concat/Add bridge."""
    from addict import Dict
    from openvino.tools.pot.algorithms.quantization import fake_quantize_configuration as fqc
    from openvino.tools.pot.algorithms.quantization.fake_quantize import compute_levels
    from openvino.tools.pot.algorithms.quantization.utils import load_hardware_config

    class _Node:
        def __init__(self, type_, shapes):
            self.type, self.shapes = type_, shapes

        def in_ports(self):
            return range(len(self.shapes))

    nodes = {name: _Node("FakeQuantize", [[1, 3, 8, 8]]) for name in fqs}
    nodes["bridge"] = _Node("Concat" if concat else "Add", [[1, 3, 8, 8]] * 2)
    fqc._fake_quantize_to_types = lambda model, hw: {
        name: ([(f"{name}_{i}", t) for i, t in enumerate(types)], group)
        for name, (types, group) in fqs.items()
    }
    fqc.find_fqs_to_unify = lambda model, cfg: [[["bridge"], sorted(unify)]] if unify else []
    fqc.get_node_by_name = lambda model, name: nodes[name]
    fqc.get_input_shape = lambda node, port: node.shapes[port]
    config = Dict({"target_device": device, "preset": preset, **(user or {})})
    hw = load_hardware_config(config)
    try:
        chosen = fqc.get_configurations_by_preset(
            config, None, fqc.read_all_fake_quantize_configurations(config, hw, None), hw
        )
        out = {}
        for name, (_, group) in fqs.items():
            conf = dict(chosen[name][group])
            conf["levels"] = compute_levels(conf, group == "weights")
            conf["signed"] = "level_low" in conf and "level_high" in conf and conf["level_low"] < 0
            out[name] = conf
        return out
    except Exception as err:  # noqa: BLE001 - the reference records POT's failures too
        return {"error": f"{type(err).__name__}: {err}"}


def main() -> None:
    devices = ["CPU", "ANY", "GPU", "GNA", "GNA3"]
    consumers = [
        (["Convolution"], "weights"),
        (["MatMul"], "weights"),
        (["Convolution"], "activations"),
        (["DepthWiseConvolution"], "activations"),
        (["Sigmoid"], "activations"),
        (["Convolution"], "outputs"),
        (["Convolution", "DepthWiseConvolution"], "activations"),
        (["Convolution", "Sigmoid"], "activations"),
        (["MatMul", "Multiply"], "weights"),
        (["Convolution", "MatMul"], "weights"),
    ]
    users = [
        None,
        {"weights": {"bits": 4}},
        {"weights": {"bits": 4, "mode": "symmetric", "granularity": "perchannel"}},
    ]
    for device, preset, (types, group), user in itertools.product(
        devices, ["performance", "mixed", "accuracy"], consumers, users
    ):
        result = pot_select(device, preset, {"fq": (types, group)}, user)
        json.dump(
            {
                "device": device,
                "preset": preset,
                "types": types,
                "group": group,
                "user": user,
                "pot": result.get("fq", result),
            },
            sys.stdout,
        )
        sys.stdout.write("\n")


if __name__ == "__main__":
    main()
