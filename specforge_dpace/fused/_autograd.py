"""The custom autograd function of the fused path: backward only scales a saved gradient.

For a chunk of blocks, every objective term ``num_t`` depends on the hidden state of slot
``s`` only through that slot's cross-entropy ``l_s``, so

    d num_t / d hidden_s = g_t[s] * d l_s / d hidden_s,  with  d l_s / d hidden_s = (softmax_s - onehot_s) @ W.

The forward pass saves ``g`` (``[T, B, N, K]``, the objective's analytic ``slot_grad``) and
``d l / d hidden`` (``[B, N, K, H]``, the size of ``hidden``); backward contracts the incoming
``d loss / d num`` with ``g`` and scales the saved rows.  No logits are saved.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


class ScaledSlotGrad(torch.autograd.Function):
    """``num`` as a function of ``hidden`` whose gradient was computed in the forward pass."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, hidden: Tensor, num: Tensor, slot_grad: Tensor, dl_dhidden: Tensor
    ) -> Tensor:
        ctx.save_for_backward(slot_grad, dl_dhidden)
        ctx.hidden_dtype = hidden.dtype
        return num.detach().clone()

    @staticmethod
    def backward(ctx, grad_num: Tensor):  # type: ignore[override]
        slot_grad, dl_dhidden = ctx.saved_tensors
        scale = torch.tensordot(grad_num.to(slot_grad.dtype), slot_grad, dims=1)  # [B, N, K]
        grad_hidden = dl_dhidden.to(scale.dtype) * scale.unsqueeze(-1)
        return grad_hidden.to(ctx.hidden_dtype), None, None, None


def attach_gradient(hidden: Tensor, num: Tensor, slot_grad: Tensor, dl_dhidden: Tensor) -> Tensor:
    """``num`` (detached values) carrying the precomputed gradient to ``hidden``."""
    return ScaledSlotGrad.apply(hidden, num, slot_grad, dl_dhidden)


class DirectionGrads(torch.autograd.Function):
    """``num`` whose gradient is a sum over gradient directions, each computed in the forward pass.

    ``pairs`` alternate coefficients ``c_d [T, B, N, K]`` and buffers ``g_d [B, N, K, H]``
    (``g_d`` = d stat_d / d hidden, or an already summed direction with ``c_d`` = ones): backward
    returns ``sum_d (grad_num . c_d)[..., None] * g_d``.  Soft-label objectives use it
    (:mod:`._soft`); hard ones keep :class:`ScaledSlotGrad` (one buffer).
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, num: Tensor, *pairs: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(*pairs)
        ctx.hidden_dtype, ctx.hidden_shape = hidden.dtype, hidden.shape
        return num.detach().clone()

    @staticmethod
    def backward(ctx, grad_num: Tensor):  # type: ignore[override]
        saved = ctx.saved_tensors
        grad = None
        for coefficients, buffer in zip(saved[0::2], saved[1::2]):
            scale = torch.tensordot(grad_num.to(coefficients.dtype), coefficients, dims=1)  # [B, N, K]
            term = buffer * scale.unsqueeze(-1)
            grad = term if grad is None else grad.add_(term)
        if grad is None:
            grad = grad_num.new_zeros(ctx.hidden_shape)
        return (grad.to(ctx.hidden_dtype), None, *([None] * len(saved)))


def attach_directions(hidden: Tensor, num: Tensor, pairs: list) -> Tensor:
    """``num`` carrying ``sum_d (grad_num . c_d) g_d`` to ``hidden`` (``pairs`` = [(c_d, g_d)])."""
    flat = [tensor for pair in pairs for tensor in pair]
    return DirectionGrads.apply(hidden, num, *flat)
