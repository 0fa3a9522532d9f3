"""What ``runtime.compile`` changes in the DiT before compiling: the rotary embedding in real
arithmetic and one q/k/v projection (``models/rope.py``). Both must leave the numbers as they were."""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_z_image import ZSingleStreamAttnProcessor

from llm_dit.models.rope import RealRopeAttnProcessor, fuse_qkv, rotate, use_real_rope


def test_rotate_is_the_complex_product():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 3, 8, generator=g, dtype=torch.float64).to(torch.bfloat16)
    angles = torch.randn(2, 5, 4, generator=g)
    f = torch.polar(torch.ones_like(angles), angles)
    # the oracle: channel pairs as complex numbers, times e^(i angle), back to pairs
    z = torch.complex(x.float()[..., 0::2], x.float()[..., 1::2]) * f[:, :, None, :]
    want = torch.stack((z.real, z.imag), dim=-1).flatten(-2).to(torch.bfloat16)
    got = rotate(x, f)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)


def test_real_rope_and_fused_qkv_keep_the_dit_output(dit, dit_output):
    before = dit_output(dit)
    n = len(dit.layers) + len(dit.noise_refiner) + len(dit.context_refiner)
    assert use_real_rope(dit) == n
    assert all(type(m.processor) is RealRopeAttnProcessor for m in dit.modules() if hasattr(m, "processor"))
    assert torch.allclose(dit_output(dit), before, rtol=0, atol=1e-5)
    assert fuse_qkv(dit) == n and fuse_qkv(dit) == 0  # fused once
    attn = dit.layers[0].attention
    n = attn.to_q.weight.shape[0]
    assert attn.to_k.weight.data_ptr() == attn.to_qkv.weight[n:].data_ptr()  # a view
    assert torch.allclose(dit_output(dit), before, rtol=0, atol=1e-5)
    # moving the DiT between devices copies each parameter apart: the rows must stay views, not copies
    from llm_dit.models.fp8 import weight_bytes

    size = weight_bytes(dit)  # shared storage counted once
    dit._apply(lambda t: t.clone())
    assert weight_bytes(dit) == size
    assert attn.to_k.weight.data_ptr() == attn.to_qkv.weight[n:].data_ptr()


def test_real_rope_keeps_the_attention_backend(dit):
    dit.set_attention_backend("_native_math")
    use_real_rope(dit)
    assert {m.processor._attention_backend for m in dit.modules() if hasattr(m, "processor")} == {"_native_math"}


def test_compile_option_installs_them(zimage, tiny_config):
    from copy import deepcopy

    from llm_dit.models.loading import apply_speed

    pipe = deepcopy(zimage.pipe)
    assert all(type(m.processor) is ZSingleStreamAttnProcessor for m in pipe.transformer.modules()
               if hasattr(m, "processor"))
    apply_speed(pipe, tiny_config.runtime.model_copy(update={"compile": True}))  # compiles lazily, at the first call
    procs = [m for m in pipe.transformer.modules() if hasattr(m, "processor")]
    assert procs and all(type(m.processor) is RealRopeAttnProcessor and m.fused_projections for m in procs)
