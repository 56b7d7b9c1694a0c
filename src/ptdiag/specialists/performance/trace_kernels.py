"""Where the GPU time goes: kernels grouped into categories and matmul precision.

Kineto records only a kernel's mangled name, so categories and precision are read from
name patterns (tables below, first match wins; order matters: `implicit_convolve_sgemm`
is a convolution although it says "gemm"). Times here are sums of kernel durations, the
"how much work" view; the overlap-aware "how long was the GPU busy" view is in
trace_timeline.
"""

from __future__ import annotations

import re
from collections import defaultdict
from functools import lru_cache

from ptdiag.specialists.performance.trace_events import GpuSpans, Span

# (category, pattern): the first pattern that matches a kernel name names its category.
KERNEL_CATEGORIES = [
    ("communication", r"nccl|rccl"),
    ("layout_transform", r"nchwToNhwc|nhwcToNchw"),
    ("attention", r"flash|fmha|attention|sdpa"),
    ("normalization", r"layer_?norm|batch_?norm|group_?norm|rms_?norm|bn_fw|bn_bw"),
    ("convolution", r"conv|cudnn|wgrad|dgrad|fprop|winograd"),
    ("gemm", r"gemm|gemv|cublas|cutlass|xmma|matmul|splitKreduce"),
    ("embedding", r"embedding"),
    ("optimizer", r"multi_tensor_apply|adam|sgd_|lamb(?!da)"),
    ("reduction", r"reduce|softmax|cub::|scan|sort|topk|argmax"),
    ("elementwise", r"elementwise|vectorized|unrolled|fill"),
]
OTHER_CATEGORY = "other"
# Categories whose kernels run on tensor cores when given fp16/bf16 (or TF32) inputs.
MATMUL_CATEGORIES = ("gemm", "convolution", "attention")

# (precision, pattern) for matmul-class kernels, first match wins: reduced precision
# names carry bf16/f16/h884...; TF32 tensor-core kernels are "s1688"/"s16816"/"tf32";
# plain fp32 (SIMT) kernels are "sgemm"/"scudnn" or templated on float.
MATMUL_PRECISIONS = [
    ("reduced", r"bf16|f16|fp16|half|bfloat16|h884|h1688|h16816|hmma|e4m3|e5m2|fp8"),
    ("tf32", r"tf32|s1688|s16816"),
    ("fp32", r"sgemm|scudnn|fp32|<float|float>|f32"),
]
UNKNOWN_PRECISION = "unknown"
TOP_KERNELS = 10
NAME_CHARS = 200

_CATEGORY_RES = [(name, re.compile(pattern, re.IGNORECASE)) for name, pattern in KERNEL_CATEGORIES]
_PRECISION_RES = [(name, re.compile(pattern, re.IGNORECASE)) for name, pattern in MATMUL_PRECISIONS]


# Names repeat thousands of times per trace; matching each distinct name once keeps big
# traces fast.
@lru_cache(maxsize=8192)
def kernel_category(name: str) -> str:
    return next((cat for cat, regex in _CATEGORY_RES if regex.search(name)), OTHER_CATEGORY)


@lru_cache(maxsize=8192)
def matmul_precision(name: str) -> str:
    return next((p for p, regex in _PRECISION_RES if regex.search(name)), UNKNOWN_PRECISION)


def kernel_breakdown(gpu: GpuSpans) -> dict[str, object]:
    """Kernel time by category, the top kernels, and matmul time by precision (ms)."""
    by_category: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    by_kernel: dict[str, list] = {}
    by_precision: dict[str, float] = defaultdict(float)
    labelled = [(span, kernel_category(span.name)) for span in gpu.kernels]
    labelled += [(span, "memcpy") for span in gpu.memcpys]
    labelled += [(span, "memset") for span in gpu.memsets]
    for span, category in labelled:
        _add(by_category[category], span)
        _add(by_kernel.setdefault(span.name, [0.0, 0, category]), span)
        if category in MATMUL_CATEGORIES:
            by_precision[matmul_precision(span.name)] += span.dur
    total_us = sum(us for us, _ in by_category.values())
    return {
        "total_gpu_time_ms": _ms(total_us),
        "categories": [
            {"category": cat, "ms": _ms(us), "share": _share(us, total_us), "count": count}
            for cat, (us, count) in sorted(by_category.items(), key=lambda kv: -kv[1][0])
        ],
        "top_kernels": [
            {"name": _short(name), "category": cat, "ms": _ms(us), "count": count,
             "share": _share(us, total_us)}
            for name, (us, count, cat) in sorted(by_kernel.items(), key=lambda kv: -kv[1][0])[:TOP_KERNELS]
        ],
        "matmul_ms_by_precision": {p: _ms(us) for p, us in sorted(by_precision.items())},
    }


def _add(accumulator: list, span: Span) -> None:
    accumulator[0] += span.dur
    accumulator[1] += 1


def _ms(us: float) -> float:
    return round(us / 1000.0, 4)


def _share(part: float, whole: float) -> float:
    return round(part / whole, 4) if whole > 0 else 0.0


def _short(name: str) -> str:
    return name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "…"
