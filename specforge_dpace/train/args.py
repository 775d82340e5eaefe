"""Flags of ``specforge-dpace train-dflash``: the familiar legacy ``scripts/train_dflash.py`` flags.

Each flag carries its legacy default (what the legacy script would use) and where it lands in
SpecForge's unified YAML config (``None``: no unified equivalent, an error there).  Flags the
table does not define reach a legacy checkout's script verbatim (after a literal ``--``, or
automatically through ``scripts/train_dflash.py``); the unified translation rejects them.
"""

from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .. import _numbers as num
from .legacy_args import LOSS_OPTION_HELP, LossOptionAction, loss_spec_type, parse_loss_option


@dataclass(frozen=True)
class Flag:
    name: str  # "--block-size"
    default: Any  # the legacy script's default
    help: str
    yaml: Optional[str]  # dotted path in the unified config; None: no unified equivalent
    type: Any = str  # numbers: a specforge_dpace._numbers.Range, checked at parse time (SpecForge's lower bounds)
    store_true: bool = False
    choices: Optional[tuple] = None

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")


_F = Flag
MODEL = (
    _F("--target-model-path", None, "target model (HF id or local directory)", "model.target_model_path"),
    _F(
        "--target-model-backend",
        None,
        "target run by 'hf' (local; the legacy default) or 'sglang'; the unified runtime has sglang only",
        "model.target_backend",
        choices=("sglang", "hf"),
    ),
    _F("--draft-config-path", None, "draft model config.json (DFlash)", "model.draft_model_config"),
    _F(
        "--block-size",
        16,
        "DFlash block size K; with --draft-config-path the draft config's block_size unless given",
        "model.draft_block_size",
        num.BLOCK_SIZE,
    ),
    _F(
        "--num-draft-layers",
        1,
        "draft transformer layers; with --draft-config-path the draft config's num_hidden_layers unless given",
        "model.draft_num_hidden_layers",
        num.DRAFT_LAYERS,
    ),
    _F(
        "--mask-token-id",
        None,
        "MASK token id (default: auto-detected from the tokenizer)",
        "model.mask_token_id",
        num.TOKEN_ID,
    ),
    _F(
        "--attention-backend",
        "flex_attention",
        "draft attention backend (use sdpa on CPU)",
        "training.attention_backend",
        choices=("eager", "sdpa", "flex_attention"),
    ),
    _F(
        "--trust-remote-code",
        False,
        "trust remote code of the target model",
        "model.trust_remote_code",
        store_true=True,
    ),
    _F("--num-anchors", 512, "anchor positions (blocks) sampled per sequence", "training.num_anchors", num.NUM_ANCHORS),
    _F(
        "--loss-decay-gamma",
        None,
        "DFlash slot decay exp(-(k-1)/gamma) of the dflash objective (7 for K=16); with --strategy domino/dspark "
        "also the method's own decay (Domino's base term, DSpark's confidence loss)",
        "training.loss_decay_gamma",
        num.FINITE,
    ),
    _F("--embedding-key", None, "embedding weight key in the target checkpoint", "model.embedding_key"),
    _F("--lm-head-key", None, "LM head weight key in the target checkpoint", "model.lm_head_key"),
)
DATA = (
    _F("--train-data-path", None, "training conversations (jsonl)", "data.train_data_path"),
    _F("--eval-data-path", None, "evaluation conversations (jsonl)", "data.eval_data_path"),
    _F(
        "--hidden-states-path",
        None,
        "unified runtime only: offline captured features (trains offline)",
        "data.hidden_states_path",
    ),
    _F("--chat-template", "qwen", "chat template name", "data.chat_template"),
    _F("--is-preformatted", False, "data is already chat-formatted text", "data.is_preformatted", store_true=True),
    _F("--dataloader-num-workers", 8, "data loader workers", "data.dataloader_num_workers", num.PROCESSES),
    _F(
        "--build-dataset-num-proc",
        8,
        "processes for dataset preprocessing",
        "data.build_dataset_num_proc",
        num.PROCESSES_POSITIVE,
    ),
    _F("--max-length", 3072, "maximum sequence length", "data.max_length", num.SEQUENCE_LENGTH),
    _F("--cache-dir", "./cache", "dataset/cache directory", "data.cache_dir"),
)
TRAINING = (
    _F("--num-epochs", 6, "training epochs", "training.num_epochs", num.POSITIVE),
    _F("--batch-size", 1, "micro-batch size per rank", "training.batch_size", num.BATCH_SIZE),
    _F("--learning-rate", 6e-4, "peak learning rate", "training.learning_rate", num.LEARNING_RATE),
    _F("--warmup-ratio", 0.04, "warm-up fraction of the schedule", "training.warmup_ratio", num.UNIT_INTERVAL),
    _F("--max-grad-norm", 1.0, "gradient clipping norm", "training.max_grad_norm", num.POSITIVE_FINITE),
    _F("--accumulation-steps", 1, "gradient accumulation steps", "training.accumulation_steps", num.POSITIVE),
    _F("--seed", 42, "random seed", "training.seed", num.SEED),
    _F(
        "--resume",
        False,
        "legacy only: resume from the last checkpoint in --output-dir (unified: "
        "use `specforge train` with training.resume_from)",
        None,
        store_true=True,
    ),
    _F("--tp-size", 1, "tensor parallel size of the target", "training.tp_size", num.PROCESSES_POSITIVE),
    _F("--dist-timeout", 30, "distributed timeout (minutes)", "training.dist_timeout", num.POSITIVE),
    _F("--log-interval", 50, "log every N steps", "training.log_interval", num.POSITIVE),
    _F("--eval-interval", 1000, "evaluate every N steps", "training.eval_interval", num.NON_NEGATIVE),
    _F("--save-interval", 1000, "checkpoint every N steps", "training.save_interval", num.NON_NEGATIVE),
)
OUTPUT = (_F("--output-dir", None, "output directory (the unified YAML config is written here too)", "output_dir"),)
TRACKING = (
    _F(
        "--report-to",
        None,
        "experiment tracker",
        "tracking.report_to",
        choices=("none", "wandb", "tensorboard", "swanlab", "mlflow"),
    ),
    *(
        _F(f"--{name}", None, f"tracker setting {name}", f"tracking.{name.replace('-', '_')}")
        for name in (
            "wandb-project",
            "wandb-name",
            "wandb-key",
            "wandb-dir",
            "swanlab-project",
            "swanlab-name",
            "swanlab-key",
            "mlflow-tracking-uri",
            "mlflow-experiment-name",
            "mlflow-run-name",
        )
    ),
    _F("--wandb-offline", False, "run W&B offline", "tracking.wandb_offline", store_true=True),
)
SGLANG = (
    _F("--sglang-attention-backend", None, "SGLang target attention backend", "model.sglang_attention_backend"),
    _F(
        "--sglang-mem-fraction-static",
        None,
        "SGLang static memory fraction",
        "model.sglang_mem_fraction_static",
        num.FRACTION,
    ),
    _F("--sglang-context-length", None, "SGLang context length", "model.sglang_context_length", num.POSITIVE),
    _F("--sglang-ep-size", None, "SGLang expert parallel size", "model.sglang_ep_size", num.PROCESSES_POSITIVE),
    *(
        _F(f"--sglang-{name}", False, f"SGLang {name}", f"model.sglang_{name.replace('-', '_')}", store_true=True)
        for name in (
            "enable-nccl-nvls",
            "enable-symm-mem",
            "enable-torch-compile",
            "enable-dp-attention",
            "enable-dp-lm-head",
        )
    ),
    _F(
        "--sglang-enable-piecewise-cuda-graph", False, "legacy only: SGLang piecewise CUDA graph", None, store_true=True
    ),
    _F(
        "--sglang-piecewise-cuda-graph-max-tokens",
        None,
        "legacy only: SGLang piecewise CUDA graph max tokens",
        None,
        num.POSITIVE,
    ),
)
LEGACY_FLAGS: tuple[Flag, ...] = MODEL + DATA + TRAINING + OUTPUT + TRACKING + SGLANG


def configure(parser: argparse.ArgumentParser) -> None:
    """Register every flag (legacy defaults are applied later, so 'given' stays visible)."""
    groups = {
        "model": MODEL,
        "dataset": DATA,
        "training": TRAINING,
        "output": OUTPUT,
        "tracker": TRACKING,
        "sglang backend": SGLANG,
    }
    for title, flags in groups.items():
        group = parser.add_argument_group(title)
        for flag in flags:
            shown = f" (legacy default: {flag.default})" if is_set(flag.default) else ""
            kwargs: dict[str, Any] = {"dest": flag.dest, "default": None, "help": flag.help + shown}
            if flag.store_true:
                kwargs["action"] = "store_true"
            else:
                kwargs["type"] = flag.type
                if flag.choices:
                    kwargs["choices"] = flag.choices
            group.add_argument(flag.name, **kwargs)

    objective = parser.add_argument_group("objective (specforge-dpace)")
    objective.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=None,
        help="unified runtime: SpecForge's DFlash-family method (training.strategy; default dflash). domino and "
        "dspark take --loss-type too (it replaces Domino's final-logits CE / DSpark's CE+L1 terms) and need a draft "
        "config of that method (--draft-config-path); dspark features also carry target_last_hidden_states",
    )
    objective.add_argument(
        "--loss-type",
        type=loss_spec_type(),
        default=None,
        metavar="SPEC",
        help="registered objective or composite spec, e.g. dpace, "
        "'dflash(gamma=10) + 0.3*first-error-focal + 40*chain' or 'dpace + 0.5*lk-lambda; normalize=true' "
        "(default: dflash)",
    )
    objective.add_argument(
        "--dpace-alpha", type=num.UNIT_INTERVAL, default=None, help="D-PACE smoothing alpha in [0, 1] (default 0.5)"
    )
    objective.add_argument(
        "--loss-option",
        dest="loss_options",
        type=parse_loss_option,
        action=LossOptionAction,
        default=None,
        metavar="KEY=VALUE",
        help=LOSS_OPTION_HELP,
    )

    launch = parser.add_argument_group("launch (specforge-dpace)")
    launch.add_argument(
        "--runtime",
        choices=("auto", "legacy", "unified"),
        default="auto",
        help="legacy: run a legacy checkout's scripts/train_dflash.py in this process; unified: "
        "translate to a SpecForge YAML config and run `specforge train`; auto (default): legacy "
        "when --specforge-root or the importable specforge is a legacy checkout",
    )
    launch.add_argument(
        "--specforge-root",
        default=None,
        metavar="PATH",
        help="legacy SpecForge checkout (directory with specforge/core/dflash.py and scripts/)",
    )
    launch.add_argument(
        "--dry-run",
        action="store_true",
        help="print the unified YAML config (or the legacy command) and exit without training; a config "
        "SpecForge's schema refuses (or a value the legacy script cannot run) exits 2 naming the flag",
    )
    launch.add_argument(
        "--plan",
        action="store_true",
        help="unified runtime: write the config, then print SpecForge's resolved launch plan "
        "(`specforge train --plan`) instead of training",
    )
    launch.add_argument(
        "--nproc-per-node",
        type=num.PROCESSES_POSITIVE,
        default=None,
        help="unified runtime: trainer processes per node (deployment.trainer.nproc_per_node; "
        "legacy runs use torchrun's own flag)",
    )
    launch.add_argument("--run-id", default=None, help="unified runtime: run_id (default: output dir name)")
    launch.add_argument(
        "--config-out",
        default=None,
        metavar="PATH",
        help="unified runtime: where to write the YAML (default: OUTPUT_DIR/specforge_config.yaml)",
    )
    online = parser.add_argument_group("unified online capture (specforge-dpace)")
    online.add_argument(
        "--server-url",
        dest="server_urls",
        action=num.AppendUnique,
        why="one capture server listed twice",
        default=None,
        metavar="URL",
        help="unified online runtime: SGLang capture server URL (repeatable); online training "
        "runs disaggregated over Mooncake (deployment.disaggregated.server_urls)",
    )
    online.add_argument(
        "--mooncake-metadata-server",
        default=None,
        metavar="URL",
        help="unified online runtime: Mooncake metadata server (default http://127.0.0.1:35880/metadata)",
    )
    online.add_argument(
        "--mooncake-master-server-addr",
        default=None,
        metavar="HOST:PORT",
        help="unified online runtime: Mooncake master address (default 127.0.0.1:35551)",
    )
    parser.add_argument(
        "passthrough",
        nargs="*",
        metavar="-- FLAGS",
        help="after a literal --: further flags passed verbatim to a legacy checkout's script "
        "(the unified runtime rejects them)",
    )


def is_set(item: Any) -> bool:
    """Whether a parsed value was given: ``None`` (and ``False`` of a switch) means "not on the command line".

    Identity checks, never truthiness or ``==``: ``0``, ``0.0`` and ``""`` are values (``0 == False``).
    """
    return item is not None and item is not False


def given(args: argparse.Namespace, flag: Flag) -> bool:
    return is_set(getattr(args, flag.dest, None))


def value(args: argparse.Namespace, flag: Flag) -> Any:
    """The flag's value, or the legacy script's default when not given."""
    return getattr(args, flag.dest) if given(args, flag) else flag.default


#: ``--strategy`` choices: SpecForge's DFlash-family methods (the legacy layout has DFlash only).
STRATEGIES = ("dflash", "domino", "dspark")


def strategy_of(args: argparse.Namespace) -> str:
    """The method ``--strategy`` names (``dflash`` when not given)."""
    strategy = getattr(args, "strategy", None)
    return "dflash" if strategy is None else strategy


def objective_of(args: argparse.Namespace) -> tuple[str, Optional[float], dict]:
    """``(loss_type, dpace_alpha or None, loss_options)`` with warnings for ignored combinations."""
    loss_type = "dflash" if args.loss_type is None else args.loss_type
    options = dict(args.loss_options or {})
    # Domino and DSpark apply loss_decay_gamma in their own terms whatever the objective.
    if args.loss_decay_gamma is not None and strategy_of(args) == "dflash":
        from ..losses import parse_spec

        names = {term.name for term in parse_spec(loss_type)}
        if "dflash" not in names:
            warnings.warn(
                f"--loss-decay-gamma {args.loss_decay_gamma} is ignored: objective {loss_type!r} has no dflash "
                "term (gamma only decays the dflash slot weights; D-PACE weights come from the drafter's "
                "confidence)",
                UserWarning,
                stacklevel=2,
            )
    return loss_type, args.dpace_alpha, options


#: Flags whose legacy default only fills a draft config generated from the target (flag -> config key).
#: With ``--draft-config-path`` the draft config's own value wins: the legacy script always takes it
#: (it ignores these flags); the unified translation writes a flag only when it is given.
DRAFT_CONFIG_FIELDS = {"--block-size": "block_size", "--num-draft-layers": "num_hidden_layers"}

#: Legacy flags the legacy script needs > 0 (flag -> why): it divides by them, or 0 ruins the run.
LEGACY_POSITIVE = {
    "--batch-size": "the data loader's batch size",
    "--accumulation-steps": "the script divides the loss and the step count by it",
    "--log-interval": "the script logs when step % log_interval == 0",
    "--save-interval": "the script checkpoints when step % save_interval == 0",
    "--eval-interval": "the script evaluates when step % eval_interval == 0",
    "--max-grad-norm": "the script clips gradients to this norm, so 0 would zero every gradient",
}


def read_draft_config(path: Optional[str]) -> Optional[dict]:
    """A local draft ``config.json`` (the file, or a directory holding it) as a dict; ``None`` when ``path``
    is not a readable local JSON file (e.g. a Hugging Face repository id: SpecForge resolves it itself)."""
    if path is None:
        return None
    candidate = Path(path)
    if candidate.is_dir():
        candidate = candidate / "config.json"
    if not candidate.is_file():
        return None
    try:
        loaded = json.loads(candidate.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def legacy_value_errors(args: argparse.Namespace) -> list[str]:
    """Given values a legacy checkout's script cannot honour, one message each (empty: all fine).

    Everything else given is forwarded verbatim (``0`` included); flags not given keep the script's
    own argparse defaults.
    """
    by_name = {flag.name: flag for flag in LEGACY_FLAGS}
    errors = []
    for name, why in LEGACY_POSITIVE.items():
        item = getattr(args, by_name[name].dest, None)
        if item is not None and item <= 0:
            errors.append(f"{name} {item}: accepted: a value > 0 ({why})")
    if args.draft_config_path is not None:
        draft = read_draft_config(args.draft_config_path)
        for name, key in DRAFT_CONFIG_FIELDS.items():
            item = getattr(args, by_name[name].dest, None)
            if item is None:
                continue
            if draft is None or key not in draft:
                warnings.warn(
                    f"{name} {item}: the legacy script takes {key} from --draft-config-path "
                    f"{args.draft_config_path} and ignores the flag (it could not be compared here)",
                    UserWarning,
                    stacklevel=2,
                )
            elif draft[key] != item:
                errors.append(
                    f"{name} {item}: the legacy script takes {key}={draft[key]!r} from --draft-config-path "
                    f"{args.draft_config_path} and ignores the flag; drop the flag or edit the draft config"
                )
    return errors


#: Wrapper flags that only mean something for the unified runtime (dest -> flag; an error on a legacy run).
UNIFIED_ONLY = {
    "plan": "--plan",
    "nproc_per_node": "--nproc-per-node",
    "run_id": "--run-id",
    "config_out": "--config-out",
    "server_urls": "--server-url",
    "mooncake_metadata_server": "--mooncake-metadata-server",
    "mooncake_master_server_addr": "--mooncake-master-server-addr",
}
