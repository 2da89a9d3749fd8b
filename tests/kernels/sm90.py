"""Compile the attention kernels for Hopper (sm_90a) on a machine without a GPU: Triton's own code generator and the
ptxas it ships, nothing launched. Catches what the interpreter cannot (layouts, shapes the GPU compiler rejects,
shared memory past the 227 KiB of an H100 block) and prints each variant's registers, stack (spilled registers),
shared memory and asynchronous copies (whether its loops were software-pipelined).

    python -m tests.kernels.sm90 [block sizes...]

Run without TRITON_INTERPRET (the interpreter replaces the kernels by Python functions); the test runs it in a
subprocess.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import warnings

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from hylra_compile.kernels import _common
from hylra_compile.kernels import decode as D
from hylra_compile.kernels import prefill as P

SMEM_LIMIT = 227 * 1024  # an H100 thread block's shared memory

# Argument types by name: pointers to fp32 scratch, to int32 indices and block ranges, to the q/k/v/out dtype; the
# mask as bool (uint8). Strides of the last dimension are 1, as Triton specialises them at launch.
_FP32 = {"X", "Imp", "MPart", "LPart", "AccPart", "LseBlk"}
_INT32 = {"Blocks", "Idx", "BlockIdx", "HeadNSel"}
_DATA = {"Q", "K", "V", "Out"}
_FLOAT = {"qk_scale", "mask_thr"}
_UNIT_STRIDES = {"sqd", "skd", "svd", "sod", "sis", "smk"}


def compile_sm90(kernel, constexprs: dict, *, num_warps: int, num_stages: int, dtype: str = "bf16"):
    """``kernel`` (a JITFunction) compiled for sm_90a with ``constexprs``."""
    signature, values = {}, dict(constexprs)
    for param in kernel.params:
        name = param.name
        if param.is_constexpr or name in _UNIT_STRIDES:
            signature[name] = "constexpr"
            values.setdefault(name, 1)
        elif name in _FP32:
            signature[name] = "*fp32"
        elif name in _INT32:
            signature[name] = "*i32"
        elif name == "Mask":
            signature[name] = "*u8"
        elif name in _DATA:
            signature[name] = f"*{dtype}"
        else:
            signature[name] = "fp32" if name in _FLOAT else "i32"
    names = [param.name for param in kernel.params]
    # As a launch specialises them: pointers 16-byte aligned, strides multiples of 16 elements.
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names
             if signature[n].startswith("*")
             or (signature[n] == "i32" and n.startswith("s") and n not in ("sbb", "sbr"))}
    source = ASTSource(fn=kernel, signature=signature, constexprs=values, attrs=attrs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})


def resources(compiled) -> dict:
    """Registers and stack bytes per thread (cuobjdump of the cubin), shared memory bytes per block, and the
    asynchronous global-to-shared copies (none: no loop was software-pipelined)."""
    import triton.backends.nvidia as nvidia

    tool = os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    return {"registers": int(re.search(r"REG:(\d+)", usage).group(1)),
            "stack": int(re.search(r"STACK:(\d+)", usage).group(1)), "shared": compiled.metadata.shared,
            "async_copies": compiled.asm["ttgir"].count("async_copy_global_to_local")}


def variants(block_size: int, *, G: int = 4, D_: int = 128, top_k: int = 2048, candidates: int = 4):
    """(name, kernel, constexprs, num_warps, num_stages) of every pass at ``block_size`` as the host code launches
    them for an 8B-shaped model (G query heads per KV head, head_dim D_), ``top_k`` tokens, refinement among
    ``candidates`` x as many."""
    n_sel = triton.next_power_of_2(top_k // block_size)
    n_cand = triton.next_power_of_2(candidates * top_k // block_size)
    bpt = _common.blocks_per_tile(block_size)
    for name, kind, sparse, write_x, with_v, n_pad in (
            ("prefill dense", "dense", False, False, True, 1), ("prefill producer", "dense_x", False, True, True, 1),
            ("prefill consumer", "sparse", True, False, True, n_sel), ("prefill refine", "sparse", True, True, False,
                                                                         n_cand)):
        hp, nw, ns = P._launch_cfg(kind, G, block_size, D_)
        yield name, P._prefill_attn_kernel, dict(
            HP=hp, G=G, QB=block_size, BLOCK_N=block_size, D=D_, DV=D_, MASK_KIND=1, IS_CAUSAL=False, SPARSE=sparse,
            N_SEL_PAD=n_pad, WRITE_X=write_x, PTX=True, C_T=64, HAS_BLOCKS=True, WITH_V=with_v,
            BPT=bpt if sparse else 1), nw, ns
    # The refinement's selection, with budgets by KV head.
    yield "prefill select", P._prefill_select_kernel, dict(NG=1, C_PAD=n_cand, N_SEL_PAD=n_sel, FROM_LIST=True,
                                                           PER_HEAD=True), 4, 3
    for name, sparse, write_lse, with_v in (
            ("decode dense", False, False, True), ("decode producer", False, True, True),
            ("decode consumer", True, False, True), ("decode refine", True, True, False)):
        yield name, D._decode_split_kernel, dict(
            G=G, G_PAD=max(16, triton.next_power_of_2(G)), D=D_, DV=D_, BLOCK_N=block_size, MASK_KIND=1,
            IS_CAUSAL=False, SPARSE=sparse, WRITE_LSE=write_lse, WITH_V=with_v, HAS_BLOCKS=True, SCAN_N=1024,
            SCAN_IT=64, BPT=bpt), 4, 3
    yield "decode select", D._decode_combine_kernel, dict(
        G=G, G_PAD=max(16, triton.next_power_of_2(G)), DV=D_, S_PAD=32, SELECT=True, WRITE_OUT=False, FROM_LIST=True,
        PER_HEAD=True, C_PAD=n_cand, N_SEL_PAD=n_sel, HAS_BLOCKS=True), 4, 3


def main(block_sizes) -> int:
    failed = 0
    for block_size in block_sizes:
        for name, kernel, constexprs, nw, ns in variants(block_size):
            try:
                used = resources(compile_sm90(kernel, constexprs, num_warps=nw, num_stages=ns))
            except Exception as e:  # noqa: BLE001 - report every variant, then fail
                failed += 1
                print(f"block {block_size:3d} {name:17s} FAILED: {type(e).__name__}: {str(e)[-400:]}")
                continue
            over = used["shared"] > SMEM_LIMIT
            failed += over
            print(f"block {block_size:3d} {name:17s} registers {used['registers']:3d} stack {used['stack']:5d} B "
                  f"shared {used['shared']:6d} B async copies {used['async_copies']:3d}"
                  + ("  OVER THE LIMIT" if over else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main([int(a) for a in sys.argv[1:]] or [16, 32, 64, 128]))
