"""``llm-dit doctor``: check a user's model folders before anything loads onto a GPU.

Reads configs, tokenizers, chat templates and the headers of the weight files; never a tensor.
Every check gives one row ``(part, check, status, detail)``; a problem's detail is one actionable
line. Expected sizes are the published ones (``tiny.FULL``) or the tiny fixture's (``tiny.TINY``);
whatever the sizes, the relations the conditioning needs must hold: Z-Image's ``cap_feat_dim`` =
Qwen3-4B's hidden size = Qwen3-VL's text hidden size = its vision tower's ``out_hidden_size``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import LlmDitError, ModelLoadError
from .chat_template import resolve_chat_template
from .doctor_system import FAIL, OK, WARN, check_memory, check_relations, check_versions
from .inspect import Weights, gib, read_weights
from .loading import first_line
from .single_file import SUBFOLDER, SingleFiles
from .tiny import FULL, TINY, Dims

#: The tokens the conditioning reads by id, and the config keys that name them.
VISION_TOKENS = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
                 "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}
THINK_TAGS = ("<think>", "</think>")


@dataclass(frozen=True)
class Row:
    part: str  # "z-image", "qwen3-vl", "system"
    check: str
    status: str  # OK, WARN or FAIL
    detail: str


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # shared between checks: hidden sizes, weights

    def add(self, part: str, check: str, status: str, detail: str) -> None:
        self.rows.append(Row(part, check, status, detail))

    @property
    def problems(self) -> list[Row]:
        return [r for r in self.rows if r.status == FAIL]

    def table(self) -> str:
        """The rows as an aligned text table, then one line per problem (or "no problems")."""
        head = ("part", "check", "status", "detail")
        cells = [head] + [(r.part, r.check, r.status, r.detail) for r in self.rows]
        widths = [max(len(c[i]) for c in cells) for i in range(3)]
        lines = ["  ".join(c[i].ljust(widths[i]) for i in range(3)) + "  " + c[3] for c in cells]
        lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 6)
        n = len(self.problems)
        lines.append("")
        lines.append("no problems found" if not n else f"{n} problem{'s' * (n != 1)}:")
        lines += [f"  {r.part} {r.check}: {r.detail}" for r in self.problems]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"problems": len(self.problems), "rows": [r.__dict__ for r in self.rows]}


def _read_json(path: Path) -> dict:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _config(report: Report, part: str, path: Path, what: str) -> dict | None:
    """The JSON object at ``path``, or None after a FAIL row saying what is wrong with it."""
    if not path.is_file():
        report.add(part, what, FAIL, f"{path} is missing: the folder is incomplete; download it again")
        return None
    try:
        return _read_json(path)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        report.add(part, what, FAIL, f"{path} is not valid JSON ({e}); download it again")
        return None


def _marked(report: Report, part: str, path: Path, check: str, key: str, want: str) -> dict | None:
    """The JSON object at ``path`` when its ``key`` is ``want`` (the file that marks a layout), else
    None after a FAIL row."""
    data = _config(report, part, path, check)
    if data is not None and data.get(key) != want:
        report.add(part, check, FAIL, f"{path} has {key} {data.get(key)!r}, not {want!r}: not a {part} checkpoint")
        return None
    return data


def _sizes(report: Report, part: str, check: str, actual: dict[str, Any],
           expect: Callable[[Dims], dict[str, Any]]) -> None:
    """One row: ``actual`` equals the published sizes, or the tiny fixture's, or differs (a warning
    listing what differs from the published model)."""
    shown = ", ".join(f"{k} {v}" for k, v in actual.items())
    for dims, name in ((FULL, "published sizes"), (TINY, "the tiny fixture's sizes")):
        if all(actual.get(k) == v for k, v in expect(dims).items()):
            report.add(part, check, OK, f"{shown} ({name})")
            return
    diff = ", ".join(f"{k} {actual.get(k)} (published {v})" for k, v in expect(FULL).items() if actual.get(k) != v)
    report.add(part, check, WARN, f"not the published architecture: {diff}")


def _weights(report: Report, part: str, folder: Path, stem: str, what: str) -> Weights | None:
    w = read_weights(folder, stem)
    if not w.files:
        report.add(part, f"{what} weights", FAIL,
                   f"{folder} has no {stem}.safetensors or {stem}.safetensors.index.json: download the weights")
        return None
    if w.missing:
        report.add(part, f"{what} weights", FAIL,
                   f"{len(w.missing)} of {len(w.files)} shards listed in {w.index} are absent "
                   f"({', '.join(w.missing)}): the download is incomplete; download it again")
    for line in w.broken:
        report.add(part, f"{what} weights", FAIL, f"{line}; download it again")
    if w.complete:
        dtypes = ", ".join(f"{k} {v:,}" for k, v in w.params_by_dtype().items())
        shards = f"{len(w.files)} shard{'s' * (len(w.files) != 1)}"
        report.add(part, f"{what} weights", OK, f"{shards}, {gib(w.bytes_on_disk)} on disk, parameters {dtypes}")
    return w if w.complete else None


# -- Z-Image -----------------------------------------------------------------------------------------


def _dit_expect(d: Dims) -> dict[str, Any]:
    return {"dim": d.dit_dim, "n_layers": d.dit_layers, "n_refiner_layers": d.dit_refiner_layers,
            "n_heads": d.dit_heads, "cap_feat_dim": d.text_hidden, "axes_dims": list(d.dit_axes),
            "axes_lens": [1536, 512, 512]}


def _text_expect(d: Dims) -> dict[str, Any]:
    return {"hidden_size": d.text_hidden, "num_hidden_layers": d.text_layers, "num_attention_heads": d.text_heads,
            "num_key_value_heads": d.text_kv_heads, "head_dim": d.text_head_dim}


def check_z_image(report: Report, folder: Path) -> None:
    """A diffusers Z-Image folder: components, configs, tokenizer, weights."""
    part = "z-image"
    if _marked(report, part, folder / "model_index.json", "layout", "_class_name", "ZImagePipeline") is None:
        return
    report.add(part, "layout", OK, f"ZImagePipeline folder {folder}")
    dit = _config(report, part, folder / "transformer" / "config.json", "transformer config")
    if dit is not None:
        _sizes(report, part, "transformer config", {k: dit.get(k) for k in _dit_expect(FULL)}, _dit_expect)
        report.facts["cap_feat_dim"] = dit.get("cap_feat_dim")
    te = _config(report, part, folder / "text_encoder" / "config.json", "text encoder config")
    if te is not None:
        _sizes(report, part, "text encoder config", {k: te.get(k) for k in _text_expect(FULL)}, _text_expect)
        report.facts["text_hidden"] = te.get("hidden_size")
    vae = _config(report, part, folder / "vae" / "config.json", "vae config")
    if vae is not None:
        got = (vae.get("latent_channels"), vae.get("scaling_factor"), vae.get("shift_factor"))
        status = OK if got == (16, 0.3611, 0.1159) else FAIL
        report.add(part, "vae config", status, f"latent channels {got[0]}, scaling {got[1]}, shift {got[2]}" + (
            "" if status == OK else " (Z-Image's VAE has 16, 0.3611, 0.1159): not Z-Image's VAE"))
    sched = _config(report, part, folder / "scheduler" / "scheduler_config.json", "scheduler config")
    if sched is not None:
        report.add(part, "scheduler config", OK if sched.get("_class_name") == "FlowMatchEulerDiscreteScheduler"
                   else WARN, f"{sched.get('_class_name')}, shift {sched.get('shift')}")
    _tokenizer(report, part, folder / "tokenizer", needs_template=True)
    parts = (("transformer", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("text_encoder", "model"))
    sizes = [_weights(report, part, folder / sub, stem, sub) for sub, stem in parts]
    if all(sizes):
        report.facts["z_image_weights"] = dict(zip(("transformer", "vae", "text_encoder"), sizes, strict=True))


def _tokenizer(report: Report, part: str, folder: Path, needs_template: bool) -> Any:
    """Load the tokenizer (files only) and check the tokens the project reads by name."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:  # any loader failure: one line
        report.add(part, "tokenizer", FAIL, f"{folder}: the tokenizer does not load ({first_line(e)})")
        return None
    unknown = [t for t in ("<|im_start|>", "<|im_end|>", *VISION_TOKENS.values())
               if tok.convert_tokens_to_ids(t) in (None, tok.unk_token_id)]
    if unknown:
        report.add(part, "tokenizer", FAIL,
                   f"{folder}: the tokenizer lacks {', '.join(unknown)}: not a Qwen3 tokenizer")
        return None
    report.add(part, "tokenizer", OK, f"{type(tok).__name__}, {len(tok)} tokens, pads {tok.padding_side}")
    if needs_template:
        status = OK if isinstance(tok.chat_template, str) and tok.chat_template else FAIL
        report.add(part, "chat template", status, "in the tokenizer" if status == OK else
                   f"{folder} has no chat template (tokenizer_config.json or chat_template.jinja): download it again")
    return tok


# -- Z-Image from single files (ComfyUI's) -------------------------------------------------------------


def check_single_files(report: Report, files: SingleFiles) -> None:
    """Each named file: what its header says it is, its quantisation and size, whether its keys fit
    the config it will be built from; the tokenizer; then the diffusers folder for parts not given."""
    from . import file_header as fh
    from . import single_file as sf

    part = "z-image"
    if files.comfy is not None:
        report.add(part, "layout", OK, f"ComfyUI models folder {files.comfy}")
    weights: dict[str, Weights] = {}
    for name in sf.PARTS:
        path = files.file(name)
        if path is None:
            continue
        check = f"{name} file"
        try:
            h = fh.read_header(path, sf.FLAGS[name])
            fh.check_kind(h, name)
            if name == "text_encoder":
                _text_file_fits(h, files)
                fits = "fits its Qwen3 config"
            else:
                folder, sub = sf.part_config(files, name)
                cls = sf.diffusers_class(name)
                meta = {k: _meta(v) for k, v in h.shapes.items() if not fh.is_quantisation_entry(k)}
                sf.check_keys(cls, meta, folder, sub, path, name)  # diffusers' converter over shapes alone
                fits = f"fits {folder / sub / 'config.json'}"
        except LlmDitError as e:
            report.add(part, check, FAIL, str(e))
            continue
        w = Weights(path.parent, [path.name], shapes=dict(h.shapes), dtypes=dict(h.dtypes))
        weights[SUBFOLDER[name]] = w
        quant = {"scaled_fp8": "scaled fp8, dequantised on load", "fp8": "plain fp8, cast on load"}.get(
            fh.quantisation(h), "not quantised")
        dtypes = ", ".join(f"{k} {v:,}" for k, v in w.params_by_dtype().items())
        report.add(part, check, OK,
                   f"{sf.WHAT[name]} {path.name}, {gib(w.bytes_on_disk)}, {quant}, {fits}; parameters {dtypes}")
        if name == "dit":
            report.facts["cap_feat_dim"] = fh.caption_dim(h)
        elif name == "text_encoder":
            report.facts["text_hidden"] = fh.text_hidden_size(h)
    if files.text_encoder is not None:
        try:
            _tokenizer(report, part, sf.find_tokenizer(files), needs_template=True)
        except LlmDitError as e:
            report.add(part, "tokenizer", FAIL, str(e))
    if files.base is not None:  # the parts not given come from a diffusers folder or hub id
        report.add(part, "other parts", OK, f"from {files.base}")
    elif len(weights) == len(sf.PARTS):
        report.facts["z_image_weights"] = weights


def _meta(shape: tuple[int, ...]):
    import torch

    return torch.empty(shape, device="meta")


def _text_file_fits(h, files: SingleFiles) -> None:
    """A text-encoder file's width and depth against the Qwen3 config it will be built with."""
    from . import file_header as fh
    from . import single_file as sf

    config = sf.text_encoder_config(files)
    got = (fh.text_hidden_size(h), fh.text_layers(h))
    want = (config.hidden_size, config.num_hidden_layers)
    if got != want:
        raise ModelLoadError(f"--text-encoder {h.path} is a Qwen3 {got[0]} wide with {got[1]} layers, but its config "
                             f"says {want[0]} and {want[1]}: give the folder of its config with --tokenizer")


# -- Qwen3-VL ----------------------------------------------------------------------------------------


def _vision_expect(d: Dims) -> dict[str, Any]:
    return {"depth": d.vision_depth, "hidden_size": d.vision_hidden, "num_heads": d.vision_heads,
            "out_hidden_size": d.text_hidden, "deepstack_visual_indexes": list(d.deepstack)}


def check_vl(report: Report, folder: Path) -> None:
    """A transformers Qwen3-VL folder: config, token ids, chat template, processor, weights."""
    part = "qwen3-vl"
    config = _marked(report, part, folder / "config.json", "config", "model_type", "qwen3_vl")
    if config is None:
        return
    text, vision = config.get("text_config") or {}, config.get("vision_config") or {}
    _sizes(report, part, "text config", {k: text.get(k) for k in _text_expect(FULL)}, _text_expect)
    _sizes(report, part, "vision config", {k: vision.get(k) for k in _vision_expect(FULL)}, _vision_expect)
    report.facts["vl_hidden"] = (text.get("hidden_size"), vision.get("out_hidden_size"))
    tok = _tokenizer(report, part, folder, needs_template=False)
    if tok is not None:
        _vl_tokens(report, part, config, tok)
        _vl_template(report, part, folder, tok)
    _processor(report, part, folder)
    w = _weights(report, part, folder, "model", "model")
    if w is not None:
        report.facts["vl_weights"] = w


def _vl_tokens(report: Report, part: str, config: dict, tok) -> None:
    wrong = [f"{key} {config.get(key)} but the tokenizer's {name} is {tok.convert_tokens_to_ids(name)}"
             for key, name in VISION_TOKENS.items() if config.get(key) != tok.convert_tokens_to_ids(name)]
    if wrong:
        report.add(part, "vision token ids", FAIL, f"config and tokenizer disagree: {'; '.join(wrong)}; the tokenizer "
                   "belongs to another model")
    else:
        report.add(part, "vision token ids", OK, ", ".join(f"{n} {config[k]}" for k, n in VISION_TOKENS.items()))
    ids = {t: tok.convert_tokens_to_ids(t) for t in THINK_TAGS}
    if any(i in (None, tok.unk_token_id) for i in ids.values()):
        report.add(part, "think tags", WARN, "the tokenizer has no <think>/</think>: a Thinking variant's reasoning "
                   "cannot be told from its caption")
        return
    special = [t for t, i in ids.items() if i in tok.added_tokens_decoder and tok.added_tokens_decoder[i].special]
    report.add(part, "think tags", OK, ", ".join(f"{t} {i}" for t, i in ids.items())
               + (f"; marked special ({', '.join(special)}): kept in captions all the same" if special else
                  "; not special"))


def _vl_template(report: Report, part: str, folder: Path, tok) -> None:
    try:
        template = resolve_chat_template(str(folder), tok)
    except LlmDitError as e:
        report.add(part, "chat template", FAIL, str(e))
        return
    messages = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
    try:
        rendered = tok.apply_chat_template(messages, chat_template=template.text, tokenize=False,
                                           add_generation_prompt=True)
    except Exception as e:  # a template that does not render
        report.add(part, "chat template", FAIL, f"the template in {template.source} does not render ({first_line(e)})")
        return
    variant = "Thinking" if rendered.rstrip().endswith("<think>") else "Instruct"
    differs = "; the tokenizer carries a different copy, not used (as transformers' processor)" \
        if template.tokenizer_differs else ""
    report.add(part, "chat template", WARN if template.tokenizer_differs else OK,
               f"from {template.source} ({variant} variant){differs}")


def _processor(report: Report, part: str, folder: Path) -> None:
    pre = _config(report, part, folder / "preprocessor_config.json", "processor")
    if pre is None:
        return
    from importlib.util import find_spec

    # transformers takes the torchvision class the file names when torchvision is there, else PIL's
    backend = "torchvision resize" if find_spec("torchvision") else "PIL resize: torchvision is not installed"
    pixels = pre.get("size") or {}
    report.add(part, "processor", OK,
               f"{pre.get('image_processor_type')} for {pre.get('processor_class')}, patch {pre.get('patch_size')}, "
               f"merge {pre.get('merge_size')}, pixels {pixels.get('shortest_edge')}..{pixels.get('longest_edge')} "
               f"({backend})")


# -- entry -------------------------------------------------------------------------------------------


def _locate(report: Report, part: str, spec: str, kind: str) -> Path | None:
    """The local folder of a model argument: ``tiny``, a folder, or a hub id in the hub cache."""
    from .loading import resolve_model_path

    if spec == "tiny":
        return Path(resolve_model_path(spec, kind))
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        return path
    if path.exists():
        report.add(part, "location", FAIL, f"{spec} is a file; give the model's folder")
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec, local_files_only=True))
    except Exception:  # not a hub id, or not in the cache
        looks_local = spec.startswith((".", "/", "~")) or spec.count("/") != 1
        report.add(part, "location", FAIL if looks_local else WARN,
                   f"{spec} does not exist" if looks_local else
                   f"{spec} is not in the hub cache of this machine: it is downloaded on first use "
                   "(or give a local folder)")
        return None


def diagnose(config: Config) -> Report:
    """Every check for the models and profile of ``config``; loads no weights."""
    from .single_file import resolve_files

    report = Report()
    try:
        files = resolve_files(config.models)
    except LlmDitError as e:  # two candidates in a ComfyUI folder, a file that does not exist ...
        report.add("z-image", "files", FAIL, str(e))
        files = None
    if files is not None:
        check_single_files(report, files)
    elif not report.problems:
        z = _locate(report, "z-image", config.models.z_image, "z_image")
        if z is not None:
            check_z_image(report, z)
    vl = _locate(report, "qwen3-vl", config.models.vl, "vl")
    if vl is not None:
        check_vl(report, vl)
    check_relations(report)
    check_memory(report, config)
    check_versions(report)
    return report
