"""SGLang benchmark runner for DFlash drafters: server lifecycle, datasets, client, metrics, reports.

``specforge-dpace bench`` is the entry point; the pieces are importable for scripts:
:func:`validate_draft_dir`, :func:`load_dataset`, :class:`BenchConfig`, :func:`run_sglang`,
:class:`ResultStore`, :func:`extract` (meta_info field mapping). ``loopback`` is a CPU stand-in
for ``sglang.launch_server`` used by the tests and smoke runs.
"""

from specforge_dpace.bench.datasets import Prompt, TemplateChoice, load_dataset
from specforge_dpace.bench.fields import MetaFieldError, SpecMeta, extract
from specforge_dpace.bench.results import ResultStore
from specforge_dpace.bench.runner import BenchConfig, BenchError, run_sglang
from specforge_dpace.bench.server import ServerError, attach, launch
from specforge_dpace.bench.validate import DraftValidationError, validate_draft_dir

__all__ = [
    "BenchConfig",
    "BenchError",
    "DraftValidationError",
    "MetaFieldError",
    "Prompt",
    "ResultStore",
    "ServerError",
    "SpecMeta",
    "TemplateChoice",
    "attach",
    "extract",
    "launch",
    "load_dataset",
    "run_sglang",
    "validate_draft_dir",
]
