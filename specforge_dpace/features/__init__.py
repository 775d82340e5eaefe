"""Offline features for SpecForge's trainer, captured from a Hugging Face target on any device.

``capture_offline_features`` writes SpecForge's ``specforge_hidden_states_v1`` files (what
``data.hidden_states_path`` reads); ``make_tiny_offline_setup`` builds a complete tiny,
download-free setup (tokenizer, Qwen3 target, DFlash draft config, features) for CPU runs;
``last_hidden=True`` also writes the target's last hidden state (``LAST_HIDDEN_KEY``), which soft-label
objectives read.
``capture_features`` is the in-memory form the demo uses; both accept only target layer ids SGLang
can capture (``0 .. n - 2`` of an ``n``-layer target; ``check_layer_ids`` says why otherwise).
Importing this package imports neither torch nor SpecForge.
"""

from .capture import (
    FEATURE_FORMAT,
    FEATURE_SUFFIX,
    LAST_HIDDEN_KEY,
    capture_features,
    capture_offline_features,
    check_layer_ids,
    load_target,
    read_feature_file,
    target_layer_ids_from_draft_config,
)
from .tiny import TinySizes, make_tiny_offline_setup, records_from_pairs, synthetic_pairs

__all__ = [
    "FEATURE_FORMAT",
    "FEATURE_SUFFIX",
    "LAST_HIDDEN_KEY",
    "TinySizes",
    "capture_features",
    "capture_offline_features",
    "check_layer_ids",
    "load_target",
    "make_tiny_offline_setup",
    "read_feature_file",
    "records_from_pairs",
    "synthetic_pairs",
    "target_layer_ids_from_draft_config",
]
