"""Benchmark 2: Qwen3-VL hidden states of a 1024 x 1024 reference plus a prompt, at layer -6.

* **full forward with logits**: ``Qwen3VLForConditionalGeneration(**inputs, output_hidden_states=True)``,
  every layer, the final norm and the LM head over every position (151936 logits each);
* **full forward, no LM head**: the same through ``model.model`` (what a careful script does);
* **ours**: ``VLEmbeddingExtractor.extract(..., hidden_layer=-6)``: forward hooks keep layer -6 and
  stop the pass there (31 of 36 decoder layers run), no LM head.

All three include the processor (chat template, image resize and patching) and copying the kept
states to the CPU as float32. The states are compared: ours must equal ``hidden_states[-6]``.
"""

from __future__ import annotations

import common
import torch
from PIL import Image


def main() -> None:
    args = common.parser(__doc__).parse_args()
    from llm_dit.vl import VLEmbeddingExtractor
    from llm_dit.vl.chat import build_messages, run_processor

    side = 128 if args.tiny else 1024
    cfg = common.config(args, **{"vl.max_pixels": side * side})
    ex = VLEmbeddingExtractor.from_config(cfg, backend="vl")
    image = Image.open(common.EXAMPLE).convert("RGB").resize((side, side))

    def inputs():
        return ex._batch(run_processor(ex.processor, build_messages([image], common.PROMPT, None), [image],
                                       side * side))

    @torch.no_grad()
    def full_logits():
        out = ex.model(**inputs(), use_cache=False, output_hidden_states=True)
        return out.hidden_states[-6][0].float().cpu(), out.logits

    @torch.no_grad()
    def full_no_head():
        out = ex.model.model(**inputs(), use_cache=False, output_hidden_states=True)
        return out.hidden_states[-6][0].float().cpu()

    def ours():
        return ex.extract(image, common.PROMPT, hidden_layer=-6, max_pixels=side * side).hidden_states[-6]

    reference, logits = full_logits()
    mine = ours()
    exact = torch.equal(mine, reference)
    rel = float((mine - reference).norm() / reference.norm())
    t = common.medians({"logits": full_logits, "no_head": full_no_head, "ours": ours}, args)
    tokens = reference.shape[0]
    base = t["logits"]["median"]
    rows = [["full transformers forward with logits (output_hidden_states=True)", base, 1.0],
            ["full forward without the LM head (model.model)", t["no_head"]["median"], t["no_head"]["median"] / base],
            ["llm-dit extract, layer -6, early exit", t["ours"]["median"], t["ours"]["median"] / base]]
    notes = (f"{tokens} tokens ({side}x{side} image + prompt). Layer -6 from the early exit "
             + ("equals transformers' `hidden_states[-6]` exactly." if exact else
                f"differs from transformers' `hidden_states[-6]`: relative error {rel:.2e}."))
    common.write(args, "vl_extraction", f"Benchmark 2: Qwen3-VL extraction, {side}x{side} reference + prompt",
                 ["path", "seconds (median)", "ratio to full forward"], rows,
                 {"times": t, "tokens": tokens, "exact": exact, "relative_error": rel,
                  "logits_shape": list(logits.shape)}, notes)


if __name__ == "__main__":
    main()
