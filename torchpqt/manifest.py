"""Run manifests: what a quantization run used, written beside its IR, and :func:`reproduce` to re-run it.

``quantize()`` / ``convert()`` attach ``qmodel.torchpqt_run`` (small: hashes and the sample indices, see
:func:`torchpqt.api.quantize`); the OpenVINO exporter writes ``manifest.json`` next to every IR it saves
(:func:`run_manifest`): the full config, the versions of torchpqt, torch, OpenVINO and ONNX, the calibration
samples used (indices, batch size, count, a fingerprint of their tensors), the model parameter hash, a hash
of the statistics and of every FakeQuantize's parameters and of the state_dict. :func:`reproduce` (or
``torchpqt reproduce manifest.json --model ... --data ...``) quantizes the model again with that config on
that data and checks each hash bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from torchpqt.errors import TorchPQTError
from torchpqt.quant.fake_quantize import FakeQuantize
from torchpqt.statistics.cache import model_hash, update_digest

__all__ = ["MANIFEST_NAME", "Reproduction", "fake_quantize_hash", "reproduce", "run_manifest", "state_dict_hash",
           "versions", "write_manifest"]

logger = logging.getLogger("torchpqt")

MANIFEST_NAME = "manifest.json"
_FORMAT = "torchpqt.run_manifest"
_VERSION = 1


def versions() -> dict[str, str | None]:
    """The installed versions of the packages a run depends on (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torchpqt", "torch", "openvino", "onnx", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def fake_quantize_hash(qmodel: torch.nn.Module) -> str:
    """sha256 of every FakeQuantize's levels and ranges (name, dtype and bytes), in module order."""
    digest = hashlib.sha256()
    for name, m in qmodel.named_modules():
        if isinstance(m, FakeQuantize):
            digest.update(f"{name}:{int(m.levels)};".encode())
            for i, t in enumerate(m.ranges()):
                update_digest(digest, f"{name}.{i}", t)
    return digest.hexdigest()


def state_dict_hash(qmodel: torch.nn.Module) -> str:
    """sha256 of the state_dict (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    for name, t in qmodel.state_dict().items():
        if isinstance(t, torch.Tensor):
            update_digest(digest, name, t)
    return digest.hexdigest()


def run_manifest(qmodel: torch.nn.Module, ir: str | None = None) -> dict[str, Any]:
    """The manifest of ``qmodel``'s run (what :func:`write_manifest` writes); the run fields are None for a
    model that ``quantize()``/``convert()`` did not make."""
    run = dict(getattr(qmodel, "torchpqt_run", None) or {})
    calibration = run.get("calibration") or {}
    return {
        "format": _FORMAT, "version": _VERSION, "ir": ir,
        "config": getattr(qmodel, "torchpqt_config", None),
        "versions": versions(),
        "model_hash": run.get("model_hash"),
        "calibration": {"indices": calibration.get("indices"), "batch_size": calibration.get("batch_size"),
                        "samples": calibration.get("samples"), "batches": calibration.get("batches"),
                        "fingerprint": calibration.get("fingerprint")} if calibration else None,
        "statistics_hash": run.get("statistics_hash"),
        "fake_quantize_hash": fake_quantize_hash(qmodel),
        "state_dict_hash": state_dict_hash(qmodel),
    }


def write_manifest(qmodel: torch.nn.Module, path: str | Path, ir: str | None = None) -> Path:
    """Write :func:`run_manifest` as JSON to ``path``."""
    path = Path(path)
    path.write_text(json.dumps(run_manifest(qmodel, ir), indent=2, default=str) + "\n", encoding="utf-8")
    return path


def _load(manifest: str | Path | Mapping) -> dict[str, Any]:
    if isinstance(manifest, Mapping):
        data = dict(manifest)
    else:
        path = Path(manifest)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TorchPQTError(f"run manifest {path} does not exist; give the manifest.json written beside the "
                                "IR") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TorchPQTError(f"run manifest {path} is not readable JSON ({exc}); give the manifest.json "
                                "written beside the IR") from exc
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise TorchPQTError("not a torchpqt run manifest (no 'format': 'torchpqt.run_manifest'); give the "
                            "manifest.json written beside the IR")
    if data.get("version") != _VERSION:
        raise TorchPQTError(f"run manifest version {data.get('version')!r}; this torchpqt reads version {_VERSION}")
    if not isinstance(data.get("config"), dict):
        raise TorchPQTError("the run manifest has no config: it was written for a model that torchpqt.quantize() "
                            "did not make, so there is nothing to re-run")
    return data


@dataclass
class Reproduction:
    """What :func:`reproduce` compared: ``checks`` rows ``(what, recorded, now, equal)``; ``qmodel`` the
    re-quantized model."""

    qmodel: torch.nn.Module
    checks: list[tuple[str, Any, Any, bool]] = field(default_factory=list)
    version_changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    @property
    def matches(self) -> bool:
        """Every recorded hash (and the sample indices) is equal bit for bit."""
        return all(ok for *_, ok in self.checks)

    @property
    def mismatches(self) -> list[str]:
        return [what for what, _, _, ok in self.checks if not ok]

    def __str__(self) -> str:
        lines = ["reproduced bit for bit" if self.matches else
                 "NOT reproduced: " + ", ".join(self.mismatches) + " differ"]
        for what, recorded, now, ok in self.checks:
            shown = (lambda v: v[:16] if isinstance(v, str) else v)
            lines.append(f"  {'ok  ' if ok else 'DIFF'} {what}: {shown(recorded)}"
                         + ("" if ok else f" recorded, {shown(now)} now"))
        for name, (old, new) in self.version_changes.items():
            lines.append(f"  note: {name} {old} recorded, {new} now")
        return "\n".join(lines)


def reproduce(manifest: str | Path | Mapping, model: torch.nn.Module, calibration_data: Iterable, *,
              transform_fn: Callable[[Any], Any] | None = None, example_inputs=None,
              progress: bool | None = None) -> Reproduction:
    """Quantize ``model`` again with the manifest's config on ``calibration_data`` and compare every hash the
    manifest recorded: the model's parameters, the calibration samples (indices and tensors), the statistics,
    every FakeQuantize's parameters, the state_dict.

    Returns:
        A :class:`Reproduction` (``.matches``; ``str()`` names what differs). Version changes are noted.

    Raises:
        TorchPQTError: the manifest is missing, not a torchpqt run manifest, or has no config.
    """
    from torchpqt.api import quantize

    data = _load(manifest)
    qmodel = quantize(model, calibration_data, data["config"], transform_fn=transform_fn,
                      example_inputs=example_inputs, progress=progress)
    now = run_manifest(qmodel)
    rows = []
    if data.get("model_hash") is not None:
        rows.append(("model parameters", data["model_hash"], model_hash(model)))
    recorded, got = data.get("calibration") or {}, now.get("calibration") or {}
    for key, what in (("indices", "calibration sample indices"), ("batch_size", "batch size"),
                      ("samples", "number of samples"), ("fingerprint", "calibration samples' tensors")):
        if recorded.get(key) is not None:
            rows.append((what, recorded[key], got.get(key)))
    for key, what in (("statistics_hash", "statistics"), ("fake_quantize_hash", "FakeQuantize parameters"),
                      ("state_dict_hash", "state_dict")):
        if data.get(key) is not None:
            rows.append((what, data[key], now[key]))
    result = Reproduction(qmodel, [(what, a, b, a == b) for what, a, b in rows])
    old, new = data.get("versions") or {}, now["versions"]
    result.version_changes = {k: (old.get(k), new.get(k)) for k in new if k in old and old.get(k) != new.get(k)}
    logger.info("%s", result)
    return result
