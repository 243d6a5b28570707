"""The tiny agent model's tokenizer: byte-level BPE, one token per digit, the Parallel tags as special tokens."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from pr1d.data.parallel_format import TAGS as PARALLEL_TAGS

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
# The parallel-format grammar's tags (owned by pr1d.data.parallel_format) are single, never-split
# special tokens: the runtime forks paths when the model emits <Parallel>, and the rewards count tags.
SPECIAL_TOKENS = (PAD, BOS, EOS, *PARALLEL_TAGS)
DEFAULT_VOCAB_SIZE = 640


def build_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for ``transformers``.

    Digits are pre-split one per token so that every number is spelt digit by digit: arithmetic then
    generalises across numbers instead of memorising one token per number (which would make held-out
    facts unlearnable). Encoding adds ``<s>`` in front; ``</s>`` is appended by whoever builds targets.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        # Every byte gets a token, so any text (a user's --tasks file, a critic's reply) stays encodable.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=list(PARALLEL_TAGS),
        # Generation batches are left-padded so that every prompt ends where generation starts.
        padding_side="left",
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: str | Path) -> None:
    """Save so that ``AutoTokenizer.from_pretrained(out_dir)`` gives the same tokenizer back."""
    tokenizer.save_pretrained(str(out_dir))


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a saved tokenizer (local files only, never remote code)."""
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
