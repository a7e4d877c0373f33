"""Mixed precision (`train.precision`): what runs in bfloat16 / float16 and what stays in float32.

- fp32 (default): everything in float32, as every model was trained before the option.
- bf16: the model (encoder) and the output layer ([T, H] x [H, N], most of a step on a large
  catalogue) run under `torch.autocast` in bfloat16, on the CPU (AVX512-BF16 or AMX) and on CUDA.
  bfloat16 has float32's range, so no loss scaling is needed.
- fp16: the same in float16, CUDA only, with a gradient scaler (float16's range is too small for
  small gradients; torch.amp.GradScaler scales the loss and skips steps whose gradients overflow).

Everything summed over many items stays float32: the losses (log-softmax, cross entropy, KL, the
entropy term), the soft labels and the teachers' cached representations and probabilities. Each
such function is wrapped in `float32`, which turns autocast off inside it and casts its low-precision
inputs to float32, so that the rule holds whoever calls it. (Under CPU autocast, softmax and
log_softmax of bfloat16 logits otherwise stay in bfloat16: 3 significant digits for a sum over
20,000 items.) Evaluation runs outside autocast and ranks float32 scores (csrec.evaluate): ties
between bfloat16 scores would be far more frequent.

S3Rec's pretraining job is always float32 (its own loop, csrec.s3rec.pretrain; fp32 key).
"""

from __future__ import annotations

import contextlib
import functools
import platform

import torch

from csrec.errors import CSRecError

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_bf16() -> bool:
    """The CPU computes in bfloat16 natively (x86: AVX512-BF16 or AMX; ARM: oneDNN's bf16 check).
    Without it torch emulates bfloat16 and a step is slower than in float32: refused, not emulated."""
    cpu = getattr(torch, "cpu", None)
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        return any(bool(getattr(cpu, name, lambda: False)()) for name in
                   ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def available_precisions(device: torch.device | str) -> tuple[str, ...]:
    """The precisions `device` trains in."""
    device = torch.device(device)
    if device.type == "cuda":
        return ("fp32", "bf16", "fp16") if torch.cuda.is_bf16_supported() else ("fp32", "fp16")
    return ("fp32", "bf16") if device.type == "cpu" and cpu_has_bf16() else ("fp32",)


def check_precision(precision: str, device: torch.device | str) -> None:
    """A CSRecError naming what is available when `device` cannot train in `precision`; never a fallback."""
    device = torch.device(device)
    available = available_precisions(device)
    if precision in available:
        return
    if precision == "fp16" and device.type != "cuda":
        why = "fp16 needs a CUDA device (float16 on the CPU is emulated and slow)"
    elif device.type == "cpu":
        why = (f"bf16 needs a CPU with bfloat16 arithmetic (AVX512-BF16 or AMX); this one has "
               f"{torch.backends.cpu.get_cpu_capability()}")
    else:
        why = f"{torch.cuda.get_device_name(device)} has no bfloat16 arithmetic"
    raise CSRecError(f"train.precision {precision}: {why}; available on {device.type}: {', '.join(available)}")


def autocast(precision: str, device: torch.device | str):
    """The context a training step's model runs in: autocast to `precision`'s dtype, or nothing (fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device | str) -> "torch.amp.GradScaler | None":
    """fp16's loss scaler (None otherwise: bfloat16 and float32 gradients do not underflow)."""
    return torch.amp.GradScaler(torch.device(device).type) if precision == "fp16" else None


def _as_float32(value):
    if isinstance(value, torch.Tensor) and value.dtype in (torch.bfloat16, torch.float16):
        return value.float()
    return value


def float32(function):
    """Run `function` with autocast off and its bfloat16/float16 tensor arguments cast to float32:
    the losses and everything summed over the catalogue (module docstring). A no-op under fp32."""
    @functools.wraps(function)
    def in_float32(*args, **kwargs):
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return function(*map(_as_float32, args), **{k: _as_float32(v) for k, v in kwargs.items()})
    return in_float32
