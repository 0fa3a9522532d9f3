"""Hidden states of chosen layers from one forward pass that stops after the deepest one.

transformers' ``hidden_states`` convention for a decoder of ``N`` layers (``N + 1`` entries):
index 0 is the input embeddings given to the first layer, index ``k`` (``1 <= k < N``) the output of
layer ``k - 1``, and index ``N`` (= -1) the final-normed output. Negative indices count from the end
(``-2`` -> ``N - 1``). We capture exactly those tensors with forward hooks: a pre-hook on layer 0
for index 0, a hook on layer ``k - 1`` for ``k``, a hook on the final norm for ``N``. Once the deepest
requested one is captured, the forward pass is stopped, so no later layer, no final norm unless
asked for, and no LM head run; nothing but the requested layers is kept.

For Qwen3-VL this matches transformers' own capture: the output of layer ``i`` is recorded before
DeepStack adds visual features to it (which only differs at image positions, in the first layers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from ..errors import InputError


class _StopForward(Exception):
    """Raised inside a hook to end a forward pass early; never escapes :func:`capture_hidden_states`."""


def canonical_layer(layer: int, num_layers: int, what: str = "model") -> int:
    """Map a ``hidden_states`` index to ``0..num_layers``; out of range is an :class:`InputError`."""
    n = num_layers
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise InputError(f"hidden layer must be an integer (got {layer!r})")
    if not -(n + 1) <= layer <= n:
        raise InputError(f"hidden layer {layer} is out of range for a {what} with {n} layers (valid: {-(n + 1)}..{n})")
    return layer % (n + 1)


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def capture_hidden_states(
    decoder_layers, final_norm, layers: Iterable[int], run: Callable[[], object], stop_early: bool = True
) -> dict[int, torch.Tensor]:
    """Call ``run()`` (a forward pass of the model owning ``decoder_layers``) and return
    ``{k: hidden_states[k]}`` for each canonical index ``k`` in ``layers``, stopping early unless
    ``stop_early`` is False (a model whose offloading hooks must see the pass end: stopped, they
    would leave their weights on the GPU)."""
    n = len(decoder_layers)
    wanted = sorted(set(layers))
    if not wanted:
        raise InputError("no hidden layer requested")
    deepest = wanted[-1]
    captured: dict[int, torch.Tensor] = {}
    handles = []

    def keep(k: int, tensor: torch.Tensor) -> None:
        captured[k] = tensor.detach()
        if k == deepest and stop_early:
            raise _StopForward

    if 0 in wanted:

        def pre(module, args, kwargs):
            keep(0, args[0] if args else kwargs["hidden_states"])

        handles.append(decoder_layers[0].register_forward_pre_hook(pre, with_kwargs=True))
    for k in wanted:
        if 1 <= k < n:
            handles.append(decoder_layers[k - 1].register_forward_hook(lambda m, a, o, k=k: keep(k, _first(o))))
        elif k == n:
            handles.append(final_norm.register_forward_hook(lambda m, a, o: keep(n, _first(o))))
    try:
        run()
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = [k for k in wanted if k not in captured]
    if missing:
        raise RuntimeError(f"the forward pass never reached hidden layer(s) {missing}")
    return captured
