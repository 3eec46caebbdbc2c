"""The runtimes and INT8 schemes that deploy offers, and how `--quantize` resolves to a scheme.

Light on purpose (no torch, no onnxruntime): `options` reads these names to declare its flags,
and every command's `--help` loads `options`.
"""
from __future__ import annotations

from ..errors import UserError

RUNTIMES = ("onnxruntime", "openvino")
"""CPU runtimes that dimap-bench and dimap-eval run ONNX files in (`deploy.runtimes`)."""
QUANTIZE_SCHEMES = ("int8", "int8-dynamic", "int8-static")
"""`--quantize` schemes (`deploy.quantize`); 'int8' is static with calibration data, else dynamic."""


def resolve_scheme(scheme: str | None, calib_data) -> str | None:
    """The scheme to run ('int8-dynamic' or 'int8-static'), or None for no quantization."""
    if scheme in (None, "none"):
        return None
    if scheme not in QUANTIZE_SCHEMES:
        raise UserError(f"--quantize {scheme}: unknown scheme; choose from: {', '.join(QUANTIZE_SCHEMES)}")
    if scheme == "int8":
        return "int8-static" if calib_data is not None else "int8-dynamic"
    if scheme == "int8-static" and calib_data is None:
        raise UserError("--quantize int8-static calibrates activation ranges on images: give --calib-data PATH "
                        "(or use --quantize int8-dynamic, which needs none)")
    return scheme
