"""Triton kernels for DSRNet (NHWC depthwise 3x3 conv and fused DSR blocks) as ``torch.library`` custom ops.

Importing this package imports torch and, when installed, Triton; ``import dsrnet`` does not import it. See
:mod:`dsrnet.kernels.ops` for the ops and :mod:`dsrnet.kernels._triton` for the kernels. The first call at new
shapes compiles (and autotunes) each kernel; one throw-away call under :func:`precompile` compiles them all in
parallel first.
"""

from dsrnet.kernels.ops import (
    direct_conv,
    dsr_block,
    dw_pw_block,
    dwconv2d,
    dwconv2d_affine_relu,
    dwconv2d_affine_relu_grad_input,
    dwconv2d_grad_input,
    dwconv2d_grad_weight,
    pack_direct,
    pack_taps,
    pointwise_conv,
    precompile,
    triton_usable,
)

__all__ = [
    "direct_conv",
    "dsr_block",
    "dw_pw_block",
    "dwconv2d",
    "dwconv2d_affine_relu",
    "dwconv2d_affine_relu_grad_input",
    "dwconv2d_grad_input",
    "dwconv2d_grad_weight",
    "pack_direct",
    "pack_taps",
    "pointwise_conv",
    "precompile",
    "triton_usable",
]
