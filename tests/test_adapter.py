"""The linear VL -> text-encoder adapter: pairs, the closed-form fit, and its use in a recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from llm_dit.cli import main
from llm_dit.conditioning import Recipe, Reference
from llm_dit.conditioning.build import build_conditioning, plan_extractions
from llm_dit.conditioning.run import run_extractions
from llm_dit.errors import InputError
from llm_dit.vl.adapter import LinearAdapter, fit_adapter, gather_pairs, ridge_fit
from llm_dit.vl.normalize import normalize

PROMPTS = ["a red house", "a cat on a mat", "two birds in the sky", "a small boat at sea", "green hills at dawn"]


def test_ridge_fit_equals_the_normal_equations():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))
    y = x @ rng.normal(size=(6, 6)) + rng.normal(size=6) + 0.1 * rng.normal(size=(40, 6))
    w, b = ridge_fit(torch.tensor(x), torch.tensor(y), 0.05)
    xc, yc = x - x.mean(0), y - y.mean(0)
    lam = 0.05 * np.trace(xc.T @ xc) / 6
    w_ref = np.linalg.solve(xc.T @ xc + lam * np.eye(6), xc.T @ yc)
    np.testing.assert_allclose(w.numpy(), w_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.numpy(), y.mean(0) - x.mean(0) @ w_ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match=r"ridge must be a finite number in \(0, 1000000\]"):
        ridge_fit(torch.tensor(x), torch.tensor(y), 0)


def test_pairs_are_the_prompt_tokens_of_both_models(extractor, zimage):
    tok, te = zimage.pipe.tokenizer, zimage.pipe.text_encoder
    x, y, counts = gather_pairs(extractor, tok, te, PROMPTS[:1], -6, -2)
    ids = tok(PROMPTS[0], add_special_tokens=False).input_ids
    assert counts == [len(ids)] and x.shape == y.shape == (len(ids), 64)
    # the text side: a plain transformers forward of Z-Image's chat, at the prompt's own positions
    chat = tok.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], tokenize=False,
                                   add_generation_prompt=True, enable_thinking=True)
    full = tok(chat, add_special_tokens=False).input_ids
    at = next(i for i in range(len(full)) if full[i:i + len(ids)] == ids)
    with torch.no_grad():
        hs = te(input_ids=torch.tensor([full]), output_hidden_states=True).hidden_states[-2][0]
    torch.testing.assert_close(y, hs[at:at + len(ids)], atol=1e-5, rtol=1e-5)
    # the VL side: the user's words of a chat without an image
    r = extractor.extract(None, PROMPTS[0], hidden_layer=-6, token_selection="user_text")
    torch.testing.assert_close(x, r.embedding)


def test_fit_beats_a_scaled_identity_on_held_out_prompts(extractor, zimage):
    from llm_dit.vl.reference import read_prompts

    a = fit_adapter(extractor, zimage.pipe.tokenizer, zimage.pipe.text_encoder, read_prompts(), -6, -2)
    assert a.info["heldout_residual"] < a.info["heldout_residual_scaled_identity"]
    assert a.info["train_residual"] < a.info["heldout_residual"]
    assert (a.vl_layer, a.vl_num_layers, a.text_layer) == (11, 16, 15)


@pytest.fixture(scope="module")
def adapter_file(extractor, zimage, tmp_path_factory):
    a = fit_adapter(extractor, zimage.pipe.tokenizer, zimage.pipe.text_encoder, PROMPTS, -6, -2)
    path = tmp_path_factory.mktemp("adapter") / "a.safetensors"
    a.save(path)
    return path


def test_a_recipe_maps_its_vl_tokens_before_normalizing(adapter_file, extractor, zimage, tiny_config, tmp_path):
    ref = tmp_path / "r.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(ref)
    recipe = Recipe(references=[Reference(image=str(ref))], adapter=str(adapter_file)).resolve(tiny_config)
    text = zimage.encode("a red house").embeddings
    reqs = plan_extractions(recipe, "a red house")
    ex = run_extractions(extractor, reqs, {str(ref): Image.open(ref).convert("RGB")})
    cond = build_conditioning(recipe, "a red house", text, ex)
    a = LinearAdapter.load(adapter_file)
    raw = ex[reqs[0]].select("full", layers=[-6]).layer_embeddings[-6]
    expect = normalize(raw.double() @ a.weight.double() + a.bias.double(), "global", target_std="text",
                       text=text).embeddings
    torch.testing.assert_close(cond.content, expect.float())
    assert not torch.allclose(cond.content, normalize(raw, "global", target_std="text", text=text).embeddings)
    with pytest.raises(InputError, match="the adapter maps VL layer 11 of 16; this part reads layer 15 of 16"):
        build_conditioning(recipe.model_copy(update={"hidden_layer": -2}), "a red house", text,
                           run_extractions(extractor, plan_extractions(recipe.model_copy(update={"hidden_layer": -2}),
                                                                       "a red house"),
                                           {str(ref): Image.open(ref).convert("RGB")}))


def test_adapter_cli_and_errors(adapter_file, tmp_path, capsys):
    out = tmp_path / "a.safetensors"
    assert main(["stats", "adapter", "--profile", "tiny", "--prompts", str(_prompts(tmp_path)), "--out", str(out)]) == 0
    assert "VL layer -6 -> text layer -2" in capsys.readouterr().out and out.is_file()
    ref = tmp_path / "r.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(ref)
    base = ["generate", "--profile", "tiny", "--prompt", "a red house", "--image", str(ref), "--steps", "2",
            "--width", "64", "--height", "64"]
    assert main([*base, "--adapter", str(out), "--out", str(tmp_path / "g.png")]) == 0
    capsys.readouterr()
    for extra, message in [
        (["--adapter", str(tmp_path / "none.safetensors")], "adapter file"),
        (["--adapter", str(out), "--vl-layer", "-3"], "the adapter maps VL layer 11 of 16"),
        (["--adapter", str(out), "--backend", "splice"], "the splice backend already reads"),
        (["--adapter", str(ref)], "is not an llm-dit adapter file"),
    ]:
        assert main([*base, *extra, "--out", str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "x.png").exists()


def _prompts(tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_text("\n".join(PROMPTS) + "\n")
    return p
