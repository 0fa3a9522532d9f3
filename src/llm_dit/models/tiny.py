"""Tiny random-weight models in the real file layouts: the test fixtures of the whole project.

``build_tiny_models(out)`` writes, deterministically and in a few seconds::

    out/z-image/    model_index.json, transformer/, vae/, scheduler/, text_encoder/ (a Qwen3ForCausalLM
                    checkpoint in 3 shards, loaded as Qwen3Model as in the real repo), tokenizer/
    out/qwen3-vl/   config.json + 2 weight shards (Qwen3VLForConditionalGeneration), tokenizer files,
                    preprocessor_config.json, video_preprocessor_config.json, generation_config.json,
                    chat_template.json

Every file is written in the published format (``../shared/research/real-checkpoints.md``), not
in the one today's transformers would write: configs carry ``rope_theta`` + ``rope_scaling`` and a
4.x ``transformers_version``; ``tokenizer_config.json`` lists every added token with its flags;
Qwen3-VL's chat template is in ``chat_template.json`` (read by the processor only), Qwen3-4B's in
its ``tokenizer_config.json``; the image processor is named ``Qwen2VLImageProcessorFast``.

Every size is small but every relationship is real: the Qwen3 hidden size equals the Qwen3-VL text
hidden size equals the DiT's ``cap_feat_dim`` (64 here, 2560 in the real models); the DiT has the
real ``axes_lens = [1536, 512, 512]`` and so the real 1504-token caption limit; the VAE has the
FLUX geometry (8x down, 16 latent channels, the real scaling and shift factors); the tokenizer is a
byte-level BPE with Qwen's pre-tokenizer, trained here, followed by the real added tokens in the
real order (``<|endoftext|>`` first ... ``</think>`` last), with the real special/non-special split.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..io import cache_root

TINY_VERSION = "4"
#: Decoder layers of both tiny language models (36 in the real ones): enough for the seeds' layer -15.
TINY_LAYERS = 16
HIDDEN = 64  # plays 2560


@dataclass(frozen=True)
class Dims:
    """The sizes of one set of models. Qwen3-4B and the Qwen3-VL-4B language model share one
    architecture (``text_*``); ``vocab = 0`` means the tokenizer's own size."""

    text_hidden: int
    text_layers: int
    text_intermediate: int
    text_heads: int
    text_kv_heads: int
    text_head_dim: int
    vocab: int
    text_positions: int
    vl_positions: int
    mrope_section: tuple[int, int, int]
    dit_dim: int
    dit_layers: int
    dit_refiner_layers: int
    dit_heads: int
    dit_axes: tuple[int, int, int]
    vae_channels: tuple[int, ...]
    vae_layers: int
    vae_groups: int
    vision_depth: int
    vision_hidden: int
    vision_intermediate: int
    vision_heads: int
    vision_positions: int
    deepstack: tuple[int, ...]
    image_pixels: tuple[int, int]  # the processor's (shortest_edge, longest_edge) in pixels


TINY = Dims(
    text_hidden=HIDDEN, text_layers=TINY_LAYERS, text_intermediate=2 * HIDDEN, text_heads=4, text_kv_heads=2,
    text_head_dim=16, vocab=0, text_positions=4096, vl_positions=8192,
    mrope_section=(4, 2, 2),  # sums to head_dim / 2, as [24, 20, 20] does for 128
    dit_dim=64, dit_layers=2, dit_refiner_layers=1, dit_heads=2, dit_axes=(8, 12, 12),
    vae_channels=(16, 16, 16, 16), vae_layers=1, vae_groups=8,
    vision_depth=4, vision_hidden=32, vision_intermediate=64, vision_heads=2,
    vision_positions=64,  # a square grid (8 x 8); the real one is 48 x 48
    deepstack=(1, 2, 3),
    image_pixels=(32 * 32, 256 * 256),  # keeps test images small; the real ones are below
)

#: The real sizes (../shared/research/probe-tiny-models.md section 7): Z-Image-Turbo's 6.15B DiT and
#: FLUX VAE, Qwen3-4B, Qwen3-VL-4B. Random weights at these sizes do the real arithmetic (benchmarks).
FULL = Dims(
    text_hidden=2560, text_layers=36, text_intermediate=9728, text_heads=32, text_kv_heads=8, text_head_dim=128,
    vocab=151936, text_positions=40960, vl_positions=262144, mrope_section=(24, 20, 20),
    dit_dim=3840, dit_layers=30, dit_refiner_layers=2, dit_heads=30, dit_axes=(32, 48, 48),
    vae_channels=(128, 256, 512, 512), vae_layers=2, vae_groups=32,
    vision_depth=24, vision_hidden=1024, vision_intermediate=4096, vision_heads=16, vision_positions=2304,
    deepstack=(5, 11, 17), image_pixels=(65536, 16777216),
)


def _text_dims(d: Dims) -> dict:
    return dict(
        hidden_size=d.text_hidden,
        intermediate_size=d.text_intermediate,
        num_attention_heads=d.text_heads,
        num_key_value_heads=d.text_kv_heads,
        head_dim=d.text_head_dim,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    )


# The real Qwen2/Qwen3 added tokens, in id order (151643 + i in the real vocabulary), and whether
# each is "special" (stripped by skip_special_tokens). <think> and </think> are not special.
ADDED_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
]

# Qwen2/Qwen3 pre-tokenizer split (the same pattern transformers' Qwen2Tokenizer uses).
_PRETOKENIZE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_CORPUS = """\
A simple cartoon house with a red roof stands on a green hill under a blue sky.
Homer Simpson eating spaghetti in a small kitchen, flat colors, thick outlines.
Describe what you see. Describe this image in extreme detail.
Generate an image following this description.
A photograph of a cat sleeping on a wooden table next to a window at sunset.
An anime girl with long hair, soft lighting, watercolor style, pastel palette.
The quick brown fox jumps over the lazy dog. A mountain lake at dawn, mist over the water.
Portrait of an old man, oil painting, dramatic light, dark background, detailed texture.
user assistant system image text style content reference prompt caption layer token
0 1 2 3 4 5 6 7 8 9 10 100 1024 512 256 the a of and in on with to is for it
"""


def _template(name: str) -> str:
    return resources.files("llm_dit.models").joinpath("templates").joinpath(name).read_text(encoding="utf-8")


def qwen3_chat_template() -> str:
    return _template("qwen3.jinja")


def qwen3_vl_chat_template(thinking: bool = False) -> str:
    return _template("qwen3_vl.jinja").replace("if THINKING", "if true" if thinking else "if false")


def build_tokenizer(chat_template: str):
    """A Qwen2Tokenizer over a byte-level BPE trained on a fixed corpus (deterministic)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2Tokenizer

    raw = Tokenizer(models.BPE())
    raw.normalizer = normalizers.NFC()
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=480, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    raw.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    vocab = raw.get_vocab()
    merges = [tuple(m) for m in json.loads(raw.to_str())["model"]["merges"]]
    base = len(vocab)
    for i, (name, _) in enumerate(ADDED_TOKENS):
        vocab[name] = base + i

    tok = Qwen2Tokenizer(
        vocab=vocab,
        # transformers annotates merges as strings and unk_token as required; it passes both to tokenizers'
        # BPE, which takes (left, right) pairs and no unknown token: the real layout.
        merges=merges,  # type: ignore[arg-type]
        unk_token=None,  # type: ignore[arg-type]
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=131072,
    )
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in ADDED_TOKENS])
    tok.chat_template = chat_template
    for i, (t, _) in enumerate(ADDED_TOKENS):  # the ids must keep the real layout
        assert tok.convert_tokens_to_ids(t) == base + i, t
    return tok


#: ``transformers_version`` as the published Qwen3-VL config carries it; Qwen3-4B's files were
#: written by a 4.5x release too (Qwen3 arrived in 4.51). transformers 5 reads both forms.
PUBLISHED_VL_WRITER = "4.57.0.dev0"
PUBLISHED_TEXT_WRITER = "4.51.0"


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _published_rope(section: dict) -> None:
    """transformers 5's ``rope_parameters`` back to the published fields: ``rope_theta`` beside
    ``rope_scaling`` (the M-RoPE fields and ``rope_type``; null for plain RoPE)."""
    rope = dict(section.pop("rope_parameters"))
    section["rope_theta"] = rope.pop("rope_theta")
    section["rope_scaling"] = rope if set(rope) - {"rope_type"} else None


def publish_config(path: Path, writer: str) -> None:
    """Rewrite a saved ``config.json`` as the published one is written (see :func:`_published_rope`)."""
    config = _read_json(path)
    _published_rope(config.get("text_config", config))
    config["transformers_version"] = writer
    _write_json(path, config)


def publish_tokenizer(folder: Path, chat_template: str | None) -> None:
    """``tokenizer_config.json`` as Qwen's are published: every added token with its flags under
    ``added_tokens_decoder``, the special ones also under ``additional_special_tokens``, and the
    chat template inside it when ``chat_template`` is given (Qwen3-4B's way); no
    ``chat_template.jinja`` beside it."""
    path = folder / "tokenizer_config.json"
    config = _read_json(path)
    vocab = _read_json(folder / "tokenizer.json")["added_tokens"]
    ids = {t["content"]: t["id"] for t in vocab}
    config.update(
        added_tokens_decoder={
            str(ids[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                          "special": special}
            for t, special in ADDED_TOKENS
        },
        additional_special_tokens=[t for t, special in ADDED_TOKENS if special and t != "<|endoftext|>"],
        bos_token=None, clean_up_tokenization_spaces=False, errors="replace", split_special_tokens=False,
    )
    config.pop("chat_template", None)
    if chat_template is not None:
        config["chat_template"] = chat_template
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    _write_json(path, config)


#: Where a Qwen3-VL fixture keeps its chat template (:func:`write_template_layout`): ``processor``
#: as published (``chat_template.json`` only), ``tokenizer`` (only in ``tokenizer_config.json``),
#: ``jinja`` (transformers 5's own ``chat_template.jinja``), ``both`` (``chat_template.json`` and a
#: *different* one in ``tokenizer_config.json``) and ``none``.
TEMPLATE_LAYOUTS = ("processor", "tokenizer", "jinja", "both", "none")


def other_template(template: str) -> str:
    """The tokenizer's copy in the ``both`` layout: the same template but for system turns, which it
    drops (so a chat with a system prompt shows which copy rendered it)."""
    loop = "{%- for message in messages -%}"
    assert loop in template, "the tiny Qwen3-VL template loops over the messages"
    return template.replace(loop, "{%- for message in messages if message['role'] != 'system' -%}")


def write_template_layout(folder: Path, layout: str, template: str) -> None:
    """Put ``template`` (the chat template) where ``layout`` says, removing it from everywhere else."""
    if layout not in TEMPLATE_LAYOUTS:
        raise ValueError(f"unknown template layout {layout!r}")
    (folder / "chat_template.json").unlink(missing_ok=True)
    in_tokenizer = {"tokenizer": template, "both": other_template(template)}.get(layout)
    publish_tokenizer(folder, in_tokenizer)
    if layout in ("processor", "both"):
        _write_json(folder / "chat_template.json", {"chat_template": template})
    elif layout == "jinja":
        (folder / "chat_template.jinja").write_text(template, encoding="utf-8")


def mark_think_special(folder: Path) -> None:
    """Flag ``<think>`` and ``</think>`` special in a saved tokenizer (``tokenizer.json`` and
    ``tokenizer_config.json``): Qwen3's are not, a checkpoint's may be, and decoding must keep them."""
    tags = ("<think>", "</think>")
    data = _read_json(folder / "tokenizer.json")
    for token in data["added_tokens"]:
        if token["content"] in tags:
            token["special"] = True
    _write_json(folder / "tokenizer.json", data)
    config = _read_json(folder / "tokenizer_config.json")
    for token in config["added_tokens_decoder"].values():
        if token["content"] in tags:
            token["special"] = True
    _write_json(folder / "tokenizer_config.json", config)


def z_image_pipeline(d: Dims = TINY):
    """A ``ZImagePipeline`` of random weights at the sizes ``d`` (on the current default device)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = build_tokenizer(qwen3_chat_template())
    ids = tok.convert_tokens_to_ids
    torch.manual_seed(0)
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=d.vocab or len(tok),
            num_hidden_layers=d.text_layers,  # as the VL language model: both are 36 in the real models
            max_position_embeddings=d.text_positions,
            **_text_dims(d),
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
            eos_token_id=ids("<|im_end|>"),
            pad_token_id=ids("<|endoftext|>"),
        )
    )
    torch.manual_seed(1)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=d.dit_dim,
        n_layers=d.dit_layers,
        n_refiner_layers=d.dit_refiner_layers,
        n_heads=d.dit_heads,
        n_kv_heads=d.dit_heads,
        qk_norm=True,
        cap_feat_dim=d.text_hidden,
        rope_theta=256.0,
        t_scale=1000.0,
        axes_dims=list(d.dit_axes),
        axes_lens=[1536, 512, 512],  # the real value: caption limit 1504
    )
    torch.manual_seed(2)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=list(d.vae_channels),
        layers_per_block=d.vae_layers,
        norm_num_groups=d.vae_groups,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=True,
        force_upcast=True,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    return ZImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tok, transformer=transformer
    )


def _build_z_image(out: Path, d: Dims = TINY) -> None:
    pipe = z_image_pipeline(d)
    pipe.save_pretrained(out, safe_serialization=True)
    # The real text encoder comes in 3 shards with an index; so does the tiny one (1 MB shards).
    pipe.text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True,
                                      max_shard_size="1MB" if d is TINY else "5GB")
    (out / "text_encoder" / "model.safetensors").unlink(missing_ok=True)
    publish_config(out / "text_encoder" / "config.json", PUBLISHED_TEXT_WRITER)
    publish_tokenizer(out / "tokenizer", qwen3_chat_template())
    # The real repo declares the encoder as Qwen3Model over a Qwen3ForCausalLM checkpoint.
    index_path = out / "model_index.json"
    index = json.loads(index_path.read_text())
    index["text_encoder"] = ["transformers", "Qwen3Model"]
    index["tokenizer"] = ["transformers", "Qwen2Tokenizer"]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def qwen3_vl_model(d: Dims = TINY, thinking: bool = False):
    """``(Qwen3VLForConditionalGeneration, tokenizer)`` of random weights at the sizes ``d``."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    tok = build_tokenizer(qwen3_vl_chat_template(thinking))
    ids = tok.convert_tokens_to_ids
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=d.vocab or len(tok),
            num_hidden_layers=d.text_layers,
            max_position_embeddings=d.vl_positions,
            **_text_dims(d),
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5e6,
                "mrope_section": list(d.mrope_section),
                "mrope_interleaved": True,
            },
            eos_token_id=ids("<|im_end|>"),
            pad_token_id=ids("<|endoftext|>"),
        ),
        vision_config=dict(
            depth=d.vision_depth,
            hidden_size=d.vision_hidden,
            intermediate_size=d.vision_intermediate,
            num_heads=d.vision_heads,
            in_channels=3,
            patch_size=16,
            temporal_patch_size=2,
            spatial_merge_size=2,
            out_hidden_size=d.text_hidden,  # == the text hidden size, as 2560 == 2560
            num_position_embeddings=d.vision_positions,
            deepstack_visual_indexes=list(d.deepstack),
            hidden_act="gelu_pytorch_tanh",
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,
    )
    torch.manual_seed(3)
    model = Qwen3VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = [ids("<|im_end|>"), ids("<|endoftext|>")]
    model.generation_config.pad_token_id = ids("<|endoftext|>")
    return model, tok


def build_tiny_qwen3_vl(out: Path, thinking: bool = False, d: Dims = TINY) -> None:
    """The tiny Qwen3-VL alone (at the sizes ``d``); ``thinking=True`` gives the Thinking variant's
    chat template."""
    from transformers import Qwen2VLImageProcessorPil

    model, tok = qwen3_vl_model(d, thinking)
    model.save_pretrained(out, safe_serialization=True, max_shard_size="2MB" if d is TINY else "5GB")
    publish_config(out / "config.json", PUBLISHED_VL_WRITER)
    generation = _read_json(out / "generation_config.json")
    generation.pop("_from_model_config", None)
    _write_json(out / "generation_config.json", dict(generation, transformers_version=PUBLISHED_VL_WRITER))
    tok.save_pretrained(out)
    write_template_layout(out, "processor", tok.chat_template)
    # Real values: shortest_edge 65536 (min pixels), longest_edge 16777216 (max pixels). The tiny
    # model keeps images small so tests stay fast.
    low, high = d.image_pixels
    image_kwargs = dict(
        patch_size=16,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        size={"shortest_edge": low, "longest_edge": high},
    )
    Qwen2VLImageProcessorPil(**image_kwargs).save_pretrained(out)
    # As published: the fast (torchvision) class is named; without torchvision transformers falls
    # back to the PIL one, with it GPU machines take the torchvision resize (bench/cuda_smoke.py).
    pre = _read_json(out / "preprocessor_config.json")
    pre.update(image_processor_type="Qwen2VLImageProcessorFast", processor_class="Qwen3VLProcessor")
    _write_json(out / "preprocessor_config.json", pre)
    video = dict(image_kwargs, processor_class="Qwen3VLProcessor", video_processor_type="Qwen3VLVideoProcessor")
    _write_json(out / "video_preprocessor_config.json", video)


def build_tiny_models(out: str | os.PathLike, dims: Dims = TINY, device: str = "cpu") -> Path:
    """Write ``out/z-image`` and ``out/qwen3-vl``; returns ``out``.

    ``dims = FULL`` (with ``device = "cuda"``, where random initialisation is quick) writes
    random-weight models at the real sizes, in bfloat16: about 29 GB, for benchmarks.
    Built in a temporary folder beside ``out`` and renamed into place in one step, so ``out`` is
    either complete or absent. ``out`` must not exist, or be an empty folder.
    """
    import torch

    from ..errors import InputError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise InputError(f"output folder {out} is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    dtype = torch.get_default_dtype()
    try:
        if dims is not TINY:
            torch.set_default_dtype(torch.bfloat16)  # the real checkpoints' dtype; half the bytes
        with torch.device(device):
            _build_z_image(tmp / "z-image", dims)
            build_tiny_qwen3_vl(tmp / "qwen3-vl", d=dims)
        if out.is_dir():
            out.rmdir()
        os.rename(tmp, out)
    finally:
        torch.set_default_dtype(dtype)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def ensure_tiny_models() -> Path:
    """The cached tiny models, built on first use. Safe against concurrent first uses."""
    final = cache_root() / f"tiny-v{TINY_VERSION}"
    marker = final / "z-image" / "model_index.json"
    if marker.is_file() and (final / "qwen3-vl" / "config.json").is_file():
        return final
    try:
        build_tiny_models(final)
    except Exception:
        if not marker.is_file():  # not another process finishing first: a real failure
            raise
    return final
