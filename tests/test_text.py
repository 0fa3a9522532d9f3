"""Z-Image text encoding: bit-identical to diffusers, any layer, long prompts."""

import pytest
import torch

from llm_dit.errors import InputError
from llm_dit.text import encode_prompt

PROMPTS = ["A simple cartoon house with a red roof", "Homer Simpson eating spaghetti, flat colors", "x"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_equals_diffusers_encode_prompt(zimage, stock_pipe, prompt):
    with torch.no_grad():
        (ref,), _ = stock_pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)
    ours = zimage.encode(prompt, hidden_layer=-2, max_length=512)
    assert ours.embeddings.dtype == torch.float32 and ours.embeddings.device.type == "cpu"
    assert torch.equal(ours.embeddings, ref)
    assert not ours.embeddings.requires_grad


def test_truncation_equals_diffusers_and_is_reported(zimage, stock_pipe):
    prompt = " ".join(["a red house on a hill"] * 20)
    with torch.no_grad():
        (ref,), _ = stock_pipe.encode_prompt(
            prompt, device="cpu", do_classifier_free_guidance=False, max_sequence_length=40
        )
    ours = zimage.encode(prompt, max_length=40, long_prompt_mode="truncate")
    assert torch.equal(ours.embeddings, ref)
    assert ours.truncated and ours.num_tokens == 40 and ours.prompt_tokens > 40


@pytest.mark.parametrize("layer", [0, 1, -1, -3, -6, -17, 16])
def test_any_layer_equals_a_plain_transformers_forward(zimage, layer):
    tok, te = zimage.pipe.tokenizer, zimage.pipe.text_encoder
    formatted = tok.apply_chat_template(
        [{"role": "user", "content": PROMPTS[0]}], tokenize=False, add_generation_prompt=True, enable_thinking=True
    )
    ids = tok(formatted, return_tensors="pt").input_ids
    with torch.no_grad():
        hs = te(input_ids=ids, output_hidden_states=True).hidden_states
    ours = zimage.encode(PROMPTS[0], hidden_layer=layer)
    torch.testing.assert_close(ours.embeddings, hs[layer][0], atol=1e-5, rtol=1e-5)
    assert ours.hidden_layer == layer


@pytest.mark.parametrize("layer", [17, -18, 99])
def test_out_of_range_layer_is_an_error(zimage, layer):
    with pytest.raises(InputError, match=r"out of range .* 16 layers \(valid: -17..16\)"):
        zimage.encode("a cat", hidden_layer=layer)


@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_empty_prompt_is_an_error(zimage, prompt):
    with pytest.raises(InputError, match="the prompt is empty"):
        zimage.encode(prompt)


@pytest.mark.parametrize("mode", ["interpolate", "pool", "attention_pool"])
def test_long_prompt_modes_compress_the_whole_prompt(zimage, mode):
    from llm_dit.text.long_prompt import fit_length

    prompt = " ".join(["a red house on a hill"] * 20)
    full = zimage.encode(prompt, max_length=1504)
    ours = zimage.encode(prompt, max_length=40, long_prompt_mode=mode)
    assert ours.compressed and not ours.truncated and ours.num_tokens == 40
    # the full prompt was encoded (padding to 1504 instead of 40 does not change the kept rows)
    torch.testing.assert_close(ours.embeddings, fit_length(full.embeddings, 40, mode), atol=1e-5, rtol=1e-5)


def test_short_prompt_is_the_same_in_every_mode(zimage):
    ref = zimage.encode(PROMPTS[0]).embeddings
    for mode in ("interpolate", "pool", "attention_pool"):
        assert torch.equal(zimage.encode(PROMPTS[0], long_prompt_mode=mode).embeddings, ref)


def test_control_characters_do_not_break_encoding(zimage):
    enc = zimage.encode("a cat\x00\x07 on a mat\u202e")
    assert torch.isfinite(enc.embeddings).all() and enc.num_tokens > 10


def test_direct_function_refuses_bad_max_length(zimage):
    with pytest.raises(InputError, match="max_length"):
        encode_prompt(zimage.pipe.tokenizer, zimage.pipe.text_encoder, "a", max_length=2000)


def test_a_streamed_encoder_runs_its_pass_to_the_end_and_gives_the_same_states(stock_pipe):
    """Under offload "encoder" the text encoder streams through the GPU behind diffusers' group
    offloading hooks. Stopped after the deepest wanted layer (as a resident encoder is), the hooks
    would keep what they brought in on the GPU; so the pass runs to the final norm, and the states
    are those of the plain, stopped pass (here on the CPU, the hooks' onload device)."""
    import copy

    from diffusers.hooks import apply_group_offloading

    from llm_dit.text.encoder import run_text_encoder

    plain = stock_pipe.text_encoder
    streamed = copy.deepcopy(plain)
    apply_group_offloading(streamed, onload_device=torch.device("cpu"), offload_type="block_level",
                           num_blocks_per_group=1)
    normed = []
    for model in (plain, streamed):
        handle = model.norm.register_forward_hook(lambda m, a, o: normed.append(m))
        ids = stock_pipe.tokenizer("a red house").input_ids
        states = run_text_encoder(model, ids, [len(model.layers) - 1, 1])  # hidden_states[-2] and [1]
        handle.remove()
        if model is plain:
            expected = states
            assert not normed  # stopped after layer N - 1: no final norm
    assert len(normed) == 1  # the streamed pass reached the final norm
    assert states.keys() == expected.keys()
    for k in expected:
        assert torch.equal(states[k], expected[k])
