"""Read the weight and bias recordings of tests/data/pot/biases/ (made by make_pot_bias_goldens.py).

    rec = load("align_chain-cpu-default")
    biases(rec)              # {"stem.0": array([...]), ...}: POT's biases after its corrections
    biases(rec, "fp32")      # the converted model's biases before POT (None: no bias Add there)
    weights(rec)             # {"stem.0": array [Cout, Cin/g, *k]}: POT's stored weights (W/2 if halved)

Layers are named by the torch module path of their op key (tests/pot_parity/pot_keys.py); ``by="key"``
gives the full key tuple instead (for ops outside a leaf module, such as a ``x @ W`` matmul).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

BIAS_DIR = Path(__file__).resolve().parent.parent / "data" / "pot" / "biases"

__all__ = ["BIAS_DIR", "biases", "cases", "layers", "load", "weights"]


def cases() -> list[str]:
    return sorted(p.stem for p in BIAS_DIR.glob("*.json"))


def load(case: str) -> dict:
    return json.loads((BIAS_DIR / f"{case}.json").read_text())


def _name(rec: dict, by: str):
    key = rec["key"]
    if key is None:
        return None
    return rec["module"] if by == "module" else tuple(tuple(k) if isinstance(k, list) else k for k in key)


def layers(record: dict, by: str = "module") -> dict:
    """Layer name -> its raw record (type, bias_add, summary, ...)."""
    out = {}
    for rec in record["layers"].values():
        name = _name(rec, by)
        if name is not None:
            if name in out:
                raise ValueError(f"{record['case']}: two IR ops map to {name!r}; use by='key'")
            out[name] = rec
    return out


def biases(record: dict, which: str = "pot", by: str = "module") -> dict[str, np.ndarray | None]:
    """{layer: bias [C]} with ``which`` = ``"pot"`` (after POT) or ``"fp32"`` (before)."""
    out = {}
    for name, rec in layers(record, by).items():
        value = rec[f"bias_{which}"]
        out[name] = None if value is None else np.asarray(value, dtype=np.float32)
    return out


def weights(record: dict, which: str = "pot", by: str = "module") -> dict[str, np.ndarray]:
    """{layer: weight} in torch layout (``weight_shape``), ``which`` = ``"pot"`` or ``"fp32"``."""
    return {name: np.asarray(rec[f"weight_{which}"], dtype=np.float32).reshape(rec["weight_shape"])
            for name, rec in layers(record, by).items()}
