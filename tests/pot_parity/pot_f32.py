"""Run the shared POT reference runner with FP32 inference (run with the POT 2023.3 interpreter).

Usage: POT_PYTHON pot_f32.py PATH/TO/pot_reference.py MODEL.onnx DATA.npz PARAMS.json OUT.json [--save-ir DIR]

POT's IEEngine compiles the FP32 model with the CPU plugin's default inference precision, which is
bfloat16 on CPUs with AVX512-BF16/AMX: the activation statistics would then be bf16 statistics (relative
errors ~1e-3) and depend on the machine. POT 2023.3 users calibrated on FP32 hardware paths, and torchpqt
collects FP32 statistics, so the goldens force ``INFERENCE_PRECISION_HINT=f32`` here. FastBiasCorrection and
BiasCorrection infer their one-layer models and subgraphs through POT's own IELauncher (another Core), which
is forced to f32 as well.
"""

import runpy
import sys

from openvino.runtime import Core
from openvino.tools.pot.engines import ie_engine
from openvino.tools.pot.utils import launcher


def _f32_core() -> Core:
    core = Core()
    core.set_property("CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return core


if __name__ == "__main__":
    ie_engine.Core = _f32_core
    launcher.Core = _f32_core
    runner = sys.argv[1]
    sys.argv = [runner, *sys.argv[2:]]
    runpy.run_path(runner, run_name="__main__")
