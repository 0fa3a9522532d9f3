"""Token positions of a Qwen3-VL chat, computed from the token ids alone.

A rendered chat with one image and a text looks like (ids, not strings)::

    <|im_start|> user \\n <|vision_start|> <|image_pad|> x N <|vision_end|> words... <|im_end|> \\n
    <|im_start|> assistant \\n                    (+ <think> \\n for the Thinking variant)

Every selection is a boolean mask over the sequence ``[S]``:

* ``full``: every position.
* ``image_only``: each ``<|vision_start|> ... <|vision_end|>`` block, markers included
  (a 1024x1024 image gives 1024 pads + 2 markers).
* ``image_no_markers``: the ``<|image_pad|>`` positions alone.
* ``text_only``: every position outside the vision blocks (template scaffolding included), as the
  seeds define it: ``full & ~image_only``.
* ``user_text``: the user's own words: the content of the user turns (after ``<|im_start|>user\\n``,
  before ``<|im_end|>``) minus the vision blocks.
* per image ``i``: :meth:`TokenMasks.image` (with or without its markers).

The seed flags ``text_tokens_only``, ``image_tokens_only`` and ``image_tokens_no_markers`` map to
``text_only``, ``image_only`` and ``image_no_markers``; they are mutually exclusive and passing none
of them means ``full`` (upstream silently defaulted to text-only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InputError, unknown_choice

TOKEN_SELECTIONS = ("full", "text_only", "user_text", "image_only", "image_no_markers")


@dataclass(frozen=True)
class SpecialIds:
    """The ids the masks need; read from the tokenizer, never hard-coded."""

    im_start: int
    im_end: int
    vision_start: int
    vision_end: int
    image_pad: int
    user_header: tuple[int, ...]  # the ids of "<|im_start|>user" (the newline token after it varies)

    @classmethod
    def from_tokenizer(cls, tok) -> SpecialIds:
        ids = tok.convert_tokens_to_ids
        header = tuple(tok("<|im_start|>user", add_special_tokens=False).input_ids)
        return cls(
            im_start=ids("<|im_start|>"),
            im_end=ids("<|im_end|>"),
            vision_start=ids("<|vision_start|>"),
            vision_end=ids("<|vision_end|>"),
            image_pad=ids("<|image_pad|>"),
            user_header=header,
        )

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SpecialIds:
        fields: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        return cls(**fields)


@dataclass
class TokenMasks:
    """Boolean masks ``[S]`` for every selection, plus each image's ``[start, end)`` pad span."""

    full: torch.Tensor
    text_only: torch.Tensor
    user_text: torch.Tensor
    image_only: torch.Tensor
    image_no_markers: torch.Tensor
    image_spans: list[tuple[int, int]]

    def get(self, selection: str) -> torch.Tensor:
        if selection not in TOKEN_SELECTIONS:
            raise InputError(unknown_choice("token selection", selection, TOKEN_SELECTIONS))
        return getattr(self, selection)

    def image(self, i: int, markers: bool = True) -> torch.Tensor:
        """The positions of image ``i`` (0-based), with its two markers or without."""
        if not 0 <= i < len(self.image_spans):
            raise InputError(f"image {i} does not exist; the chat has {len(self.image_spans)} image(s)")
        start, end = self.image_spans[i]
        m = torch.zeros_like(self.full)
        m[start - 1 if markers else start : end + 1 if markers else end] = True
        return m

    def counts(self) -> dict[str, int]:
        return {name: int(self.get(name).sum()) for name in TOKEN_SELECTIONS}


def compute_token_masks(input_ids: torch.Tensor, special: SpecialIds) -> TokenMasks:
    """All masks of :class:`TokenMasks` from a 1-D id sequence."""
    ids = input_ids.reshape(-1)
    n = ids.shape[0]
    vstart = ids == special.vision_start
    vend = ids == special.vision_end
    depth = vstart.long().cumsum(0) - vend.long().cumsum(0)
    # inside a block: after a start and up to (and including) its end marker
    image_only = (depth > 0) | vend
    image_no_markers = image_only & ~vstart & ~vend
    full = torch.ones(n, dtype=torch.bool)
    text_only = ~image_only

    user = torch.zeros(n, dtype=torch.bool)
    header = list(special.user_header)
    ids_list = ids.tolist()
    h = len(header)
    i = 0
    while i + h <= n:
        if ids_list[i : i + h] == header:
            # Skip the newline token that ends the header. Byte-level BPE may merge it with a newline
            # that starts the user's text ("\n\n"); that leading newline is then dropped with it.
            j = i + h + 1
            while j < n and ids_list[j] != special.im_end:
                user[j] = True
                j += 1
            i = j
        else:
            i += 1
    user_text = user & ~image_only

    spans: list[tuple[int, int]] = []
    starts = torch.nonzero(vstart).flatten().tolist()
    ends = torch.nonzero(vend).flatten().tolist()
    # Any id sequence gets masks (tests/test_properties.py): unbalanced markers pair up as far as they go.
    for s, e in zip(starts, ends, strict=False):
        spans.append((s + 1, e))
    return TokenMasks(full, text_only, user_text, image_only, image_no_markers, spans)


def check_selection_possible(selection: str, num_images: int, has_text: bool) -> None:
    """Refuse a selection the chat cannot fill, before any model runs."""
    if selection in ("image_only", "image_no_markers") and num_images == 0:
        raise InputError(f"token selection '{selection}' is empty: the chat has no image")
    if selection == "user_text" and not has_text:
        raise InputError("token selection 'user_text' is empty: the chat has no text")


#: The seeds' boolean spelling of a selection, accepted at the public doors (``extract``, ``select``)
#: as keyword arguments and turned into a ``token_selection`` name there; the library passes names.
NOTES_FLAGS = {"text_tokens_only": "text_only", "image_tokens_only": "image_only",
               "image_tokens_no_markers": "image_no_markers"}


def take_notes_flags(kwargs: dict) -> dict[str, bool]:
    """Remove the seeds' flags (:data:`NOTES_FLAGS`) from ``kwargs`` and return them."""
    return {k: kwargs.pop(k) for k in list(kwargs) if k in NOTES_FLAGS}


def resolve_token_selection(token_selection: str | None = None, **notes_flags: bool) -> str:
    """A selection name from either the name or one of the seed's boolean flags (never both)."""
    unknown = [k for k in notes_flags if k not in NOTES_FLAGS]
    if unknown:
        raise InputError(f"unknown argument {unknown[0]!r}; the token flags are {', '.join(NOTES_FLAGS)}")
    chosen = [NOTES_FLAGS[k] for k, on in notes_flags.items() if on]
    if len(chosen) > 1:
        raise InputError(
            "text_tokens_only, image_tokens_only and image_tokens_no_markers are mutually exclusive "
            f"(got {', '.join(chosen)})"
        )
    if chosen and token_selection not in (None, chosen[0]):
        raise InputError(f"token_selection='{token_selection}' contradicts the flag for '{chosen[0]}'")
    name = chosen[0] if chosen else (token_selection or "full")
    if name not in TOKEN_SELECTIONS:
        raise InputError(unknown_choice("token selection", name, TOKEN_SELECTIONS))
    return name


def pool_grid(x: torch.Tensor, k: int) -> torch.Tensor:
    """Average ``k x k`` neighbourhoods of a token grid ``x: [h, w, D] -> [ceil(h/k), ceil(w/k), D]``.

    Edge windows that the grid does not fill average only the tokens they hold.
    """
    if k == 1:
        return x
    h, w, d = x.shape
    ph, pw = (-h) % k, (-w) % k
    grid = F.pad(x.permute(2, 0, 1)[None].float(), (0, pw, 0, ph))
    ones = F.pad(torch.ones(1, 1, h, w, dtype=torch.float32, device=x.device), (0, pw, 0, ph))
    total = F.avg_pool2d(grid, k, divisor_override=1)
    count = F.avg_pool2d(ones, k, divisor_override=1)
    return (total / count)[0].permute(1, 2, 0).to(x.dtype)


def pool_image_tokens(
    hidden: dict[int, torch.Tensor],
    input_ids: torch.Tensor,
    special: SpecialIds,
    token_grids: list[tuple[int, int]],
    k: int,
) -> tuple[dict[int, torch.Tensor], torch.Tensor, list[tuple[int, int]]]:
    """Pool each image's ``(h, w)`` token grid by ``k`` in every layer; returns new states, ids and grids.

    The image's ``h*w`` pad tokens are in row-major grid order (Qwen3-VL's merger emits them so),
    so they are reshaped to ``[h, w, D]``, pooled with :func:`pool_grid` and flattened back. Text
    positions and markers are untouched; the ids get a shorter run of ``<|image_pad|>``.
    """
    if k < 1:
        raise InputError(f"pool must be at least 1 (got {k})")
    if k == 1:
        return hidden, input_ids, list(token_grids)
    masks = compute_token_masks(input_ids, special)
    if len(masks.image_spans) != len(token_grids):
        raise ValueError("one token grid per image is needed")
    pieces: dict[int, list[torch.Tensor]] = {layer: [] for layer in hidden}
    id_pieces: list[torch.Tensor] = []
    new_grids: list[tuple[int, int]] = []
    prev = 0
    for (start, end), (gh, gw) in zip(masks.image_spans, token_grids, strict=True):  # lengths checked above
        if end - start != gh * gw:
            raise ValueError(f"image span of {end - start} tokens does not match its {gh}x{gw} grid")
        nh, nw = -(-gh // k), -(-gw // k)
        new_grids.append((nh, nw))
        for layer, h in hidden.items():
            pooled = pool_grid(h[start:end].reshape(gh, gw, -1), k).reshape(nh * nw, -1)
            pieces[layer] += [h[prev:start], pooled]
        id_pieces += [input_ids[prev:start], torch.full((nh * nw,), special.image_pad, dtype=input_ids.dtype)]
        prev = end
    for layer, h in hidden.items():
        pieces[layer].append(h[prev:])
    id_pieces.append(input_ids[prev:])
    return {layer: torch.cat(p) for layer, p in pieces.items()}, torch.cat(id_pieces), new_grids
