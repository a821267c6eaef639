"""The tensor dtypes autombw reads and writes, and what each checkpoint format calls them.

One table for every reader and writer (the offline merge, the bridge's save, the simulator).
torch and the stdlib only (the WebUI bridge extension copies this module).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

# dtype -> (safetensors header name, torch storage class a .ckpt pickle names; "" = none)
_NAMES: Mapping[torch.dtype, tuple[str, str]] = {
    torch.float64: ("F64", "DoubleStorage"),
    torch.float32: ("F32", "FloatStorage"),
    torch.float16: ("F16", "HalfStorage"),
    torch.bfloat16: ("BF16", "BFloat16Storage"),
    torch.int64: ("I64", "LongStorage"),
    torch.int32: ("I32", "IntStorage"),
    torch.int16: ("I16", "ShortStorage"),
    torch.int8: ("I8", "CharStorage"),
    torch.uint8: ("U8", "ByteStorage"),
    torch.bool: ("BOOL", "BoolStorage"),
    torch.float8_e4m3fn: ("F8_E4M3", ""),
    torch.float8_e5m2: ("F8_E5M2", ""),
}

DTYPE_TO_ST: Mapping[torch.dtype, str] = {dt: names[0] for dt, names in _NAMES.items()}
ST_TO_DTYPE: Mapping[str, torch.dtype] = {v: k for k, v in DTYPE_TO_ST.items()}
DTYPE_TO_CKPT_STORAGE: Mapping[torch.dtype, str] = {
    dt: names[1] for dt, names in _NAMES.items() if names[1]
}

# Output dtypes a user can ask for (config ``outputs.dtype``, ``merge --dtype``, bridge save).
OUTPUT_DTYPES: Mapping[str, torch.dtype] = {
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp32": torch.float32,
}


ELEMENT_SIZES: Mapping[torch.dtype, int] = {
    dt: torch.empty((), dtype=dt).element_size() for dt in _NAMES
}  # a table: the header of a checkpoint names thousands of tensors


def element_size(dtype: torch.dtype) -> int:
    return ELEMENT_SIZES.get(dtype) or torch.empty((), dtype=dtype).element_size()
