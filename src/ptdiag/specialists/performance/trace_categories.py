"""What a piece of GPU work is, and in what precision it ran, from the CPU op that launched it.

Kernel names say little that lasts: cuBLAS calls its Hopper GEMMs `nvjet_*` and
`sm90_xmma_*`, cuDNN picks engines by name per release, and a bf16 GEMM's name may carry
no dtype at all. The op that launched the kernel (trace_launchers) says what the work is
(aten::addmm is a GEMM whichever kernel cuBLAS chose) and its recorded input dtypes
(record_shapes' "Input type") say the precision. So, as TraceLens does:

- a kernel is categorised by its launching op's name (OP_CATEGORIES; TraceLens' category
  names, so its `ops_summary_by_category` report compares directly), then by op-name
  patterns, then, for ops not listed, by TraceLens' rule on the op's ATen kernel name
  (`void at::native...elementwise...` is elementwise);
- kernel-name patterns (NAME_CATEGORIES) are the fallback only for kernels whose launch
  sits in no CPU op;
- collective kernels (NCCL/RCCL) are `communication` by name first, the same test the GPU
  timeline uses to split communication from computation.

Memory copies are `memcpy` whichever op issued them (their fix is fewer host syncs or
pinned memory, not the op's); a memset is charged to its op's category (cuBLAS and cuDNN
zero their workspaces inside aten::mm or aten::cudnn_convolution) or is `memset` alone.

Where ptdiag departs from the TraceLens release that wrote the fixture reports: it lists
a few more aten ops that launch GEMMs or reductions (marked below), and counts
aten::_flash_attention_forward (the launcher under scaled_dot_product_attention) as SDPA,
as current TraceLens does, where that release left it in `other`.
"""

from __future__ import annotations

import re
from functools import lru_cache

GEMM, CONV_FWD, CONV_BWD = "GEMM", "CONV_fwd", "CONV_bwd"
NORM_FWD, NORM_BWD, SDPA_FWD, SDPA_BWD = "NORM_fwd", "NORM_bwd", "SDPA_fwd", "SDPA_bwd"
ELEMENTWISE, REDUCE, MULTI_TENSOR, TRITON = "elementwise", "reduce", "multi_tensor_apply", "triton"
COMMUNICATION, MEMCPY, MEMSET, OTHER = "communication", "memcpy", "memset", "other"

# Categories whose work runs on tensor cores given bf16/fp16/fp8 (or TF32) inputs: the
# ones AMP and TF32 speed up.
MATMUL_CATEGORIES = (GEMM, CONV_FWD, CONV_BWD, SDPA_FWD, SDPA_BWD)
# Memory-bound categories torch.compile fuses.
FUSIBLE_CATEGORIES = (ELEMENTWISE, NORM_FWD, NORM_BWD, REDUCE)

_NORMS = ("batch", "layer", "group", "instance")
_NORM_VARIANTS = ("aten::{}_norm", "aten::native_{}_norm", "aten::cudnn_{}_norm", "aten::miopen_{}_norm")

# Launching op name -> category. TraceLens' registry (TraceLens/PerfModel/torch_op_mapping.py)
# unless marked "ptdiag".
OP_GROUPS = {
    GEMM: ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_mm",
           # ptdiag: these launch cuBLAS GEMM/GEMV kernels themselves too
           "aten::_addmm_activation", "aten::addbmm", "aten::addmv", "aten::mv", "aten::dot",
           "aten::_int_mm"),
    CONV_FWD: ("aten::convolution", "aten::cudnn_convolution", "aten::miopen_convolution",
               # ptdiag: older torch's and fused/depthwise launchers
               "aten::_convolution", "aten::cudnn_convolution_transpose", "aten::cudnn_convolution_relu",
               "aten::cudnn_convolution_add_relu", "aten::_conv_depthwise2d"),
    CONV_BWD: ("aten::convolution_backward",
               # ptdiag: torch < 1.11 split the backward into input and weight ops
               "aten::cudnn_convolution_backward", "aten::cudnn_convolution_backward_input",
               "aten::cudnn_convolution_backward_weight", "aten::cudnn_convolution_transpose_backward",
               "aten::cudnn_convolution_transpose_backward_input",
               "aten::cudnn_convolution_transpose_backward_weight"),
    NORM_FWD: (*(v.format(n) for n in _NORMS for v in _NORM_VARIANTS), "aten::_fused_rms_norm",
               # ptdiag: torch 2's functional batch norm
               "aten::_native_batch_norm_legit", "aten::_native_batch_norm_legit_no_training"),
    NORM_BWD: (*(v.format(n) + "_backward" for n in _NORMS for v in _NORM_VARIANTS),
               "aten::_fused_rms_norm_backward"),
    SDPA_FWD: ("aten::_scaled_dot_product_flash_attention", "aten::_scaled_dot_product_efficient_attention",
               "aten::_scaled_dot_product_cudnn_attention", "aten::_flash_attention_forward",
               "aten::_efficient_attention_forward", "FlashAttnFunc", "flash_attn::_flash_attn_forward",
               "flash_attn::_flash_attn_varlen_forward", "flash_attn_3::fwd"),
    SDPA_BWD: ("aten::_scaled_dot_product_flash_attention_backward",
               "aten::_scaled_dot_product_efficient_attention_backward",
               "aten::_scaled_dot_product_cudnn_attention_backward", "aten::_flash_attention_backward",
               "aten::_efficient_attention_backward", "FlashAttnFuncBackward",
               "flash_attn::_flash_attn_backward", "flash_attn::_flash_attn_varlen_backward"),
    ELEMENTWISE: ("aten::copy", "aten::copy_", "aten::clamp_min", "aten::clamp_min_", "aten::clamp_max",
                  "aten::clamp_max_", "aten::sigmoid", "aten::rsqrt", "aten::silu", "aten::neg", "aten::pow",
                  "aten::div", "aten::div_", "aten::mul", "aten::mul_", "aten::add", "aten::add_",
                  "aten::sigmoid_backward", "aten::threshold_backward"),
    REDUCE: ("aten::sum", "aten::mean", "aten::max", "aten::min", "aten::norm", "aten::linalg_norm", "aten::std",
             "aten::var", "aten::logsumexp", "aten::cumsum", "aten::cumprod", "aten::amin", "aten::amax",
             # ptdiag: softmax is a row reduction (its kernels are not named at::native...reduce)
             "aten::_softmax", "aten::_log_softmax", "aten::_softmax_backward_data",
             "aten::_log_softmax_backward_data"),
}
OP_CATEGORIES = {op: category for category, ops in OP_GROUPS.items() for op in ops}
# Op-name patterns for ops the table does not list (re.match: anchored at the start).
OP_NAME_PATTERNS = [
    (TRITON, r"triton"),
    (COMMUNICATION, r"record_param_comms|c10d::|c10d_functional::|nccl:"),
]
# TraceLens' rule for any other op: what its ATen kernel's name says.
ATEN_KERNEL_PREFIX = "void at::native"
ATEN_KERNEL_CATEGORIES = [(ELEMENTWISE, "elementwise"), (REDUCE, "reduce"), (MULTI_TENSOR, "multi_tensor_apply")]

COLLECTIVE_KERNEL = r"nccl|rccl"
# Kernels launched outside any CPU op: (category, pattern), first match wins; order
# matters (`implicit_convolve_sgemm` is a convolution although it says "gemm").
NAME_CATEGORIES = [
    (SDPA_BWD, r"flash_bwd|fmha.*(bwd|backward)|attention.*backward"),
    (SDPA_FWD, r"flash|fmha|attention|sdpa"),
    (NORM_BWD, r"(layer_?norm|batch_?norm|group_?norm|rms_?norm).*(backward|bwd|grad)|bn_bw"),
    (NORM_FWD, r"layer_?norm|batch_?norm|group_?norm|rms_?norm|bn_fw"),
    (CONV_BWD, r"dgrad|wgrad|conv.*(backward|bwd)"),
    (CONV_FWD, r"conv|cudnn|fprop|winograd"),
    (GEMM, r"gemm|gemv|cublas|cutlass|xmma|nvjet|matmul|splitKreduce"),
    (MULTI_TENSOR, r"multi_tensor_apply"),
    (REDUCE, r"reduce|softmax|cub::|scan|sort|topk|argmax"),
    (TRITON, r"^triton_"),
    (ELEMENTWISE, r"elementwise|vectorized|unrolled|fill"),
]
# Kernels that only convert between NCHW and NHWC (cuDNN does so around a convolution
# given the other layout): the time channels_last removes.
LAYOUT_TRANSFORM_KERNEL = r"nchwToNhwc|nhwcToNchw"

# Precision of matmul-class work: the first floating-point input dtype of its op.
DTYPE_PRECISIONS = {"c10::BFloat16": "bf16", "c10::Half": "fp16", "float": "fp32", "double": "fp64"}
FP8_DTYPE_PREFIX = "c10::Float8_"  # c10::Float8_e4m3fn, c10::Float8_e5m2, ...
# fp32 inputs ran on TF32 tensor cores when the kernel says so (sm90_xmma_gemm_f32f32_tf32f32,
# cutlass_80_tensorop_s1688gemm); cuBLAS' nvjet names do not tell, so those stay fp32.
TF32_KERNEL = r"tf32|s1688"
# Kernels with no linked op (or an op recorded without shapes): the name's dtype hints,
# first match wins.
NAME_PRECISIONS = [
    ("fp8", r"e4m3|e5m2|fp8"),
    ("bf16", r"bf16|bfloat16"),
    ("fp16", r"f16|fp16|half|h884|h1688|h16816|hmma|nvjet_h"),
    ("tf32", TF32_KERNEL),
    ("fp32", r"sgemm|scudnn|fp32|<float|float>|f32"),
]
UNKNOWN_PRECISION = "unknown"

_OP_PATTERNS = [(category, re.compile(pattern)) for category, pattern in OP_NAME_PATTERNS]
_NAME_CATEGORIES = [(category, re.compile(pattern, re.IGNORECASE)) for category, pattern in NAME_CATEGORIES]
_NAME_PRECISIONS = [(precision, re.compile(pattern, re.IGNORECASE)) for precision, pattern in NAME_PRECISIONS]
_COLLECTIVE = re.compile(COLLECTIVE_KERNEL, re.IGNORECASE)
_TF32 = re.compile(TF32_KERNEL, re.IGNORECASE)
_LAYOUT = re.compile(LAYOUT_TRANSFORM_KERNEL)


# (kernel, op) pairs repeat thousands of times per trace: each distinct one is decided once.
@lru_cache(maxsize=16384)
def kernel_category(kernel: str, op: str | None) -> str:
    """The category of a kernel launched by op (None: launched outside any CPU op)."""
    if _COLLECTIVE.search(kernel):
        return COMMUNICATION
    if op is None:
        return next((cat for cat, regex in _NAME_CATEGORIES if regex.search(kernel)), OTHER)
    listed = op_category(op)
    if listed is not None:
        return listed
    if kernel.startswith(ATEN_KERNEL_PREFIX):
        return next((cat for cat, needle in ATEN_KERNEL_CATEGORIES if needle in kernel), OTHER)
    return OTHER


@lru_cache(maxsize=4096)
def op_category(op: str) -> str | None:
    """The category an op's name alone decides (the table, then the patterns); None if neither."""
    listed = OP_CATEGORIES.get(op)
    if listed is not None:
        return listed
    return next((cat for cat, regex in _OP_PATTERNS if regex.match(op)), None)


@lru_cache(maxsize=16384)
def matmul_precision(kernel: str, input_types: tuple[str, ...]) -> str:
    """bf16/fp16/fp8/tf32/fp32/fp64 from the launching op's input dtypes, else from the
    kernel name, else "unknown"."""
    precision = next(filter(None, map(_dtype_precision, input_types)), None)
    if precision == "fp32" and _TF32.search(kernel):
        return "tf32"
    if precision is not None:
        return precision
    return next((p for p, regex in _NAME_PRECISIONS if regex.search(kernel)), UNKNOWN_PRECISION)


def is_layout_transform(kernel: str) -> bool:
    return bool(_LAYOUT.search(kernel))


def _dtype_precision(input_type: str) -> str | None:
    if input_type.startswith(FP8_DTYPE_PREFIX):
        return "fp8"
    return DTYPE_PRECISIONS.get(input_type)
