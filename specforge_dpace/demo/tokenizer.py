"""A small byte-level BPE tokenizer trained locally with ``tokenizers`` (no download).

Two special tokens are added: ``<|endoftext|>`` (document separator) and ``<|mask|>`` (the
DFlash draft's mask token, so that it never collides with a real text token).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

EOS_TOKEN = "<|endoftext|>"
MASK_TOKEN = "<|mask|>"
SPECIAL_TOKENS = (EOS_TOKEN, MASK_TOKEN)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """Train a byte-level BPE ``tokenizers.Tokenizer`` on ``texts`` (deterministic for a fixed input)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if not 300 <= int(vocab_size) <= 65536:
        raise ValueError(f"vocab_size={vocab_size} is invalid; accepted: 300..65536 (256 bytes + merges + specials)")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(vocab_size),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    return tokenizer


def save_tokenizer(tokenizer, directory: Path | str) -> Path:
    """Write ``tokenizer.json`` plus the config files ``AutoTokenizer`` needs."""
    from transformers import PreTrainedTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS_TOKEN, mask_token=MASK_TOKEN)
    fast.save_pretrained(str(directory))
    return directory


def load_tokenizer(directory: Path | str):
    """The ``tokenizers.Tokenizer`` saved in ``directory``."""
    from tokenizers import Tokenizer

    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise ValueError(
            f"no tokenizer.json in {str(directory)!r}; run scripts/build_demo_target.py or pass --retrain-target"
        )
    return Tokenizer.from_file(str(path))


def special_ids(tokenizer) -> dict:
    """Ids of the special tokens (``eos``, ``mask``)."""
    eos, mask = tokenizer.token_to_id(EOS_TOKEN), tokenizer.token_to_id(MASK_TOKEN)
    if eos is None or mask is None:
        raise ValueError(f"tokenizer lacks the special tokens {SPECIAL_TOKENS}")
    return {"eos": int(eos), "mask": int(mask)}


def encode_documents(tokenizer, texts: Iterable[str]) -> list[list[int]]:
    """Token ids per document (no special tokens added)."""
    return [enc.ids for enc in tokenizer.encode_batch(list(texts), add_special_tokens=False)]
