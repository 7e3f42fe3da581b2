"""``@triton.jit`` helpers shared by the kernels."""
import triton
import triton.language as tl


@triton.jit
def round_bf16(x, ENABLED: tl.constexpr):
    """Round fp32 ``x`` to the nearest bf16 value (ties to even), still held in fp32.

    On a GPU the store into a bf16 tensor rounds this way by itself; Triton's interpreter
    truncates instead, so interpreted kernels call this first (``ENABLED``) and the store's
    truncation becomes exact.
    """
    if ENABLED:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = tl.where(x == x, bits.to(tl.float32, bitcast=True), x)
    return x
