"""Run SGLang 0.5.23's own draft-config parsers, model registry, model constructors and ``load_weights`` (and its
Domino rollout and DSpark Markov block) on CPU over draft directories; print one JSON object per directory.

Run as a subprocess by ``test_sglang_cpu.py`` (opt-in), because it installs import-time shims that must not leak
into the test process.  SGLang 0.5.23 cannot be imported on this CPU machine as it is: its package imports
multimodal config modules that need torchvision (which must not be installed beside the CPU torch here), the
``AutoImageProcessor`` registration of a newer transformers, and ``vllm._custom_ops`` (imported by its rotary
embedding on a non-CUDA, non-``SGLANG_USE_CPU_ENGINE`` host).  The shims stand in for those imports only; none
of them is called by the code under test (a called shim raises).  The runtime context is published with
SGLang's own test helper (``sglang.test.parallel_groups.publish``), as SGLang's unit tests do.

Input (argv[1], JSON): ``{"target": DIR, "items": [{"path": DIR, "method": M, "ragged_verify_mode": MODE,
"hidden": [[...]], "anchor": INT}, ...]}``.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import sys
import traceback
import types


class _Unavailable:
    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        raise RuntimeError("a test shim was called: the code under test needs the real module")

    def __getattr__(self, name):
        return _Unavailable()

    def __mro_entries__(self, bases):
        return (object,)


class _ShimModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Unavailable()


class _TorchvisionShim(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _ShimModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def install_shims() -> None:
    sys.meta_path.insert(0, _TorchvisionShim())
    for name in ("vllm", "vllm._custom_ops"):
        module = types.ModuleType(name)
        module.__path__ = []
        module.rotary_embedding = _Unavailable()
        sys.modules[name] = module
    import sglang  # noqa: F401  (its transformers patches run first)
    import transformers

    class _ImageProcessorRegistry:
        @classmethod
        def register(cls, *args, **kwargs):
            return None

    transformers.AutoImageProcessor = _ImageProcessorRegistry


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def probe(item: dict, target_weights: dict) -> dict:
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file
    from sglang.srt.models.registry import ModelRegistry
    from sglang.srt.speculative.dflash_utils import parse_dflash_draft_config
    from sglang.srt.speculative.dspark_components.dspark_config import parse_dspark_draft_config
    from sglang.srt.utils.hf_transformers_utils import get_config

    os.environ["SGLANG_RAGGED_VERIFY_MODE"] = item.get("ragged_verify_mode", "static")
    out: dict = {"path": item["path"], "key": item.get("key", item["path"]), "stage": "config"}
    try:
        config = get_config(item["path"], trust_remote_code=False)
        out["architectures"] = list(config.architectures or [])
        cls, arch = ModelRegistry.resolve_model_cls(out["architectures"])
        out["resolved"] = cls.__name__
        out["stage"] = "parse"
        if item["method"] == "dspark":
            parsed = parse_dspark_draft_config(draft_hf_config=config)
            out["parsed"] = {"gamma": parsed.gamma, "markov_rank": parsed.markov_rank, "mask": parsed.mask_token_id}
        else:
            parsed = parse_dflash_draft_config(draft_hf_config=config)
            out["parsed"] = {"block_size": parsed.block_size, "projector_type": parsed.projector_type}
        out["stage"] = "build"
        model = cls(config)
        out["stage"] = "load"
        state = {}
        for name in sorted(os.listdir(item["path"])):
            if name.endswith(".safetensors"):
                state.update(load_file(os.path.join(item["path"], name)))
        model.load_weights(iter(state.items()))
        out["stage"] = "done"
        out["parameters"] = sorted(n for n, _ in model.named_parameters())
        out["confidence_head"] = getattr(model, "confidence_head", None) is not None
        if "hidden" in item:
            hidden = torch.tensor(item["hidden"], dtype=torch.float32)[None]
            anchor = torch.tensor([int(item["anchor"])])
            embed = torch.nn.Embedding.from_pretrained(target_weights["model.embed_tokens.weight"])
            lm_head = target_weights["lm_head.weight"]
            if item["method"] == "domino":
                from sglang.srt.speculative.domino_utils import domino_greedy_rollout

                tokens = domino_greedy_rollout(
                    draft_hidden=hidden, bonus_tokens=anchor, target_embedding=embed, lm_head_weight=lm_head,
                    prefix_gru=model.prefix_gru, embed_proj=model.embed_proj, vocab_size=lm_head.shape[0],
                    shift_label=bool(model.shift_label), candidate_pool_size=int(item.get("candidate_pool", 2048)),
                    in_cuda_graph=False,
                )  # fmt: skip
            else:
                from sglang.srt.speculative.dspark_components.dspark_draft import DraftNoise, draft_markov_block

                class _SingleRank:  # TP 1: SpecTpSync.sync returns the tensor unchanged
                    def sync(self, site, tensor):
                        return tensor

                tokens, _ = draft_markov_block(
                    markov_head=model.markov_head, base_logits=F.linear(hidden, lm_head), anchor_tokens=anchor,
                    draft_hidden=hidden, step_temperatures=torch.zeros(1),
                    noise=DraftNoise(key=0, offset=torch.zeros(1, dtype=torch.long)),
                    tp_sync=_SingleRank(), greedy_draft=True,
                )  # fmt: skip
            out["proposals"] = tokens[0].tolist()
    except Exception as exc:  # the verdict is the point: report it
        out["error"] = _error(exc)
        out["traceback"] = traceback.format_exc(limit=3)
    return out


def main() -> int:
    request = json.loads(sys.argv[1])
    install_shims()
    from safetensors.torch import load_file
    from sglang.srt.server_args import ServerArgs
    from sglang.test.parallel_groups import publish

    publish(ServerArgs(model_path=request["target"], device="cpu"), role="test")
    target_weights = load_file(os.path.join(request["target"], "model.safetensors"))
    for item in request["items"]:
        print("PROBE " + json.dumps(probe(item, target_weights)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
