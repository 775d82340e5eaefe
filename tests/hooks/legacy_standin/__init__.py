"""STAND-IN legacy SpecForge checkout tree, written per generation (not SpecForge code).

``write_tree(root, generation)`` writes::

    root/specforge/__init__.py, core/__init__.py   empty packages
    root/specforge/core/dflash.py                  dflash_src.py with its GENERATION line set
    root/specforge/args.py, data.py                the names the script imports (stubs)
    root/scripts/train_dflash.py                   a runnable stand-in of the legacy script

The stand-in script keeps the lines the ``patches/`` diffs anchor on (the ``specforge.core.dflash``
import, ``return parser.parse_args()`` after the SGLang argument group, the constructor call's
last arguments) so ``git apply --check`` is meaningful, and it really trains a tiny model for a
few steps so the wrapper's in-process launch can be tested end to end.  Real revisions are
checked by the opt-in ``legacy_checkout`` tests (tests/README.md).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

GENERATIONS = ("pre-dpace", "dpace", "dpace-metrics")
HERE = Path(__file__).resolve().parent

_ARGS_PY = '''"""STAND-IN for specforge/args.py of a legacy checkout (only what the script calls)."""


class TrackerArgs:
    @staticmethod
    def add_args(parser):
        parser.add_argument("--report-to", type=str, default="none")


class SGLangBackendArgs:
    @staticmethod
    def add_args(parser):
        parser.add_argument("--sglang-mem-fraction-static", type=float, default=0.4)
'''

_DATA_PY = '''"""STAND-IN for specforge/data.py: a tiny random token batch instead of a dataset."""

import torch


def build_eagle3_dataset(vocab, seq_len, seed):
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab - 1, (2, seq_len), generator=gen)
    loss_mask = torch.ones(2, seq_len)
    loss_mask[:, :2] = 0
    return input_ids, loss_mask


def prepare_dp_dataloaders(*args, **kwargs):
    raise NotImplementedError("stand-in")
'''

_SCRIPT_HEAD = '''#!/usr/bin/env python
"""STAND-IN for scripts/train_dflash.py of a legacy SpecForge checkout ({generation}); not SpecForge code.

Parses a subset of the legacy flags, trains a tiny drafter for --num-epochs steps on CPU and
writes OUTPUT_DIR/standin_result.json (what the model was built with, the losses).
"""

import argparse
import json
import os

import torch

from specforge.args import SGLangBackendArgs, TrackerArgs
from specforge.core.dflash import OnlineDFlashModel
from specforge.data import build_eagle3_dataset, prepare_dp_dataloaders


class TinyDraft(torch.nn.Module):
    def __init__(self, hidden, target_width):
        super().__init__()
        self.fc = torch.nn.Linear(target_width, hidden)
        self.mix = torch.nn.Linear(hidden, hidden)

    def forward(self, position_ids, noise_embedding, target_hidden, attention_mask):
        context = self.fc(target_hidden).mean(dim=1, keepdim=True)
        return torch.tanh(self.mix(noise_embedding + context))


def parse_args():
    parser = argparse.ArgumentParser(description="stand-in legacy train_dflash")
    model_group = parser.add_argument_group("model")
    model_group.add_argument("--target-model-path", type=str, required=True)
    model_group.add_argument("--draft-config-path", type=str, default=None)
    model_group.add_argument("--block-size", type=int, default=16)
    model_group.add_argument("--attention-backend", type=str, default="flex_attention",
                             choices=["eager", "sdpa", "flex_attention"])
    model_group.add_argument("--num-anchors", type=int, default=512)
    model_group.add_argument("--loss-decay-gamma", type=float, default=None)
'''

_SCRIPT_LOSS_FLAGS = """    model_group.add_argument(
        "--loss-type",
        type=str,
        default="dflash",
        choices=sorted(["dflash", "dpace", "dpace-cumulative-confidence-only", "dpace-continuation-value-only"]),
    )
    model_group.add_argument("--dpace-alpha", type=float, default=0.5)
"""

_SCRIPT_BODY = """    dataset_group = parser.add_argument_group("dataset")
    dataset_group.add_argument("--train-data-path", type=str, required=True)
    dataset_group.add_argument("--max-length", type=int, default=3072)
    training_group = parser.add_argument_group("training")
    training_group.add_argument("--num-epochs", type=int, default=6)
    training_group.add_argument("--learning-rate", type=float, default=6e-4)
    output_group = parser.add_argument_group("output")
    output_group.add_argument("--output-dir", type=str, required=True)
    tracker_group = parser.add_argument_group("tracker")
    TrackerArgs.add_args(tracker_group)
    sglang_group = parser.add_argument_group("sglang backend")
    SGLangBackendArgs.add_args(sglang_group)

    return parser.parse_args()


def main():
    args = parse_args()
    torch.manual_seed(0)
    vocab, hidden = 48, 16
    draft_model = TinyDraft(hidden, 2 * hidden)
    lm_head = torch.nn.Linear(hidden, vocab, bias=False).requires_grad_(False)
    embed = torch.nn.Embedding(vocab, hidden).requires_grad_(False)
    dflash_model = OnlineDFlashModel(
        draft_model=draft_model,
        target_lm_head=lm_head,
        target_embed_tokens=embed,
        block_size=args.block_size,
        mask_token_id=vocab - 1,
        attention_backend=args.attention_backend,
        num_anchors=args.num_anchors,
{ctor_tail}    )
    optimizer = torch.optim.AdamW(draft_model.parameters(), lr=args.learning_rate)
    input_ids, loss_mask = build_eagle3_dataset(vocab, min(args.max_length, 40), seed=1)
    features = torch.randn(*input_ids.shape, 2 * hidden, generator=torch.Generator().manual_seed(2))
    losses = []
    for _ in range(args.num_epochs):
        out = dflash_model(input_ids=input_ids, hidden_states=features, loss_mask=loss_mask)
        optimizer.zero_grad()
        out[0].backward()
        optimizer.step()
        losses.append(float(out[0]))
    plan = getattr(dflash_model, "_specforge_dpace_plan", None)
    result = {{
        "generation": "{generation}",
        "model_loss_type": getattr(dflash_model, "loss_type", None),
        "loss_decay_gamma": dflash_model.loss_decay_gamma,
        "loss_options": getattr(dflash_model, "loss_options", None),
        "plugin_spec": None if plan is None else plan.spec,
        "forward_outputs": len(out),
        "losses": losses,
    }}
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "standin_result.json"), "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()
"""

_CTOR_TAIL = {
    "pre-dpace": "        loss_decay_gamma=args.loss_decay_gamma,\n",
    "dpace": "        loss_decay_gamma=args.loss_decay_gamma,\n        loss_type=args.loss_type,\n"
    "        dpace_alpha=args.dpace_alpha,\n",
}


def script_source(generation: str) -> str:
    """Text of the stand-in ``scripts/train_dflash.py`` for ``generation``."""
    family = "pre-dpace" if generation == "pre-dpace" else "dpace"
    flags = "" if family == "pre-dpace" else _SCRIPT_LOSS_FLAGS
    body = _SCRIPT_BODY.format(ctor_tail=_CTOR_TAIL[family], generation=generation)
    return _SCRIPT_HEAD.format(generation=generation) + flags + body


def dflash_source(generation: str) -> str:
    if generation not in GENERATIONS:
        raise ValueError(f"unknown stand-in generation {generation!r}; expected one of {GENERATIONS}")
    text = (HERE / "dflash_src.py").read_text(encoding="utf-8")
    return re.sub(
        r"^GENERATION = .*$", f'GENERATION = "{generation}"  # written by write_tree', text, count=1, flags=re.M
    )


def write_tree(root: Path, generation: str) -> Path:
    """Write the stand-in checkout for ``generation`` under ``root``; returns ``root``."""
    root = Path(root)
    package = root / "specforge"
    (package / "core").mkdir(parents=True, exist_ok=True)
    (root / "scripts").mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text('"""STAND-IN legacy specforge package."""\n')
    (package / "core" / "__init__.py").write_text("")
    (package / "core" / "dflash.py").write_text(dflash_source(generation))
    (package / "args.py").write_text(_ARGS_PY)
    (package / "data.py").write_text(_DATA_PY)
    (root / "scripts" / "train_dflash.py").write_text(script_source(generation))
    return root


def load_dflash(path: Path, name: str):
    """Import a (stand-in or real checkout's) ``dflash.py`` by file path under a private module name.

    A real checkout's file imports only ``specforge.modeling.draft.dflash`` from SpecForge, which the
    installed unified package provides (same draft-model call convention), so nothing is stubbed.
    """
    spec = importlib.util.spec_from_file_location(name, str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def tiny_parts(vocab: int = 64, hidden: int = 32, block_size: int = 4, seed: int = 0, attn: str = "sdpa"):
    """``(draft_model, lm_head, embed_tokens)``: a real tiny SpecForge ``DFlashDraftModel`` (CPU)."""
    import torch
    from specforge.modeling.draft.dflash import DFlashDraftModel
    from transformers import Qwen3Config

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=256,
    )
    config.block_size = block_size
    config.num_target_layers = 2
    config.dflash_config = {"target_layer_ids": [0, 1], "mask_token_id": vocab - 1}
    config._attn_implementation = attn
    head = torch.nn.Linear(hidden, vocab, bias=False).requires_grad_(False)
    embed = torch.nn.Embedding(vocab, hidden).requires_grad_(False)
    return DFlashDraftModel(config), head, embed


def tiny_batch(vocab: int = 64, hidden: int = 32, batch: int = 2, seq_len: int = 24, seed: int = 1) -> dict:
    import torch

    gen = torch.Generator().manual_seed(seed)
    loss_mask = torch.ones(batch, seq_len)
    loss_mask[:, :3] = 0
    loss_mask[-1, -5:] = 0
    return {
        "input_ids": torch.randint(0, vocab - 1, (batch, seq_len), generator=gen),
        "hidden_states": torch.randn(batch, seq_len, 2 * hidden, generator=gen),
        "loss_mask": loss_mask,
    }


def run_forward(model, batch: dict, seed: int = 7):
    """Seeded forward (same anchors for every model); passes ``attention_mask`` where the revision wants it."""
    import inspect

    import torch

    kwargs = dict(batch)
    if "attention_mask" in inspect.signature(model.forward).parameters:
        kwargs["attention_mask"] = torch.ones_like(batch["loss_mask"], dtype=torch.long)
    torch.manual_seed(seed)
    return model(**kwargs)


def build(module, loss_type=None, parts=None, **kwargs):
    """``module.OnlineDFlashModel`` over ``parts`` with keyword arguments (sdpa, small anchors)."""
    draft, head, embed = parts or tiny_parts()
    if loss_type is not None:
        kwargs["loss_type"] = loss_type
    kwargs.setdefault("attention_backend", "sdpa")
    kwargs.setdefault("num_anchors", 6)
    return module.OnlineDFlashModel(
        draft_model=draft, target_lm_head=head, target_embed_tokens=embed, mask_token_id=63, block_size=4, **kwargs
    )
