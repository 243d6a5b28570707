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


def missing_parallel_tags(tokenizer) -> list[str]:
    """The Parallel tags ``tokenizer`` does not hold as one token each (all six for a model from elsewhere)."""
    return [tag for tag in PARALLEL_TAGS if len(tokenizer.encode(tag, add_special_tokens=False)) != 1]


def add_parallel_tags(model, tokenizer) -> list[str]:
    """Make ``model`` + ``tokenizer`` speak the Parallel format; returns the tags that were added.

    Any causal LM's tokenizer: the missing tags become special tokens (never split, never merged with their
    neighbours), the embeddings grow to the new vocabulary and each new row starts at the mean of the existing
    rows (input and, when untied, output), so a tag starts as an "average token" rather than noise that the
    first steps would have to undo. A tokenizer without a pad token pads with its EOS. The caller trains the
    embedding rows (under LoRA: ``modules_to_save``, see :func:`embedding_module_names`).
    """
    import torch

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    missing = missing_parallel_tags(tokenizer)
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    emb = model.get_input_embeddings()
    old = emb.num_embeddings
    if old < len(tokenizer):
        out = model.get_output_embeddings()
        tied = out is not None and out.weight.data_ptr() == emb.weight.data_ptr()
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            emb = model.get_input_embeddings()
            emb.weight[old:] = emb.weight[:old].mean(dim=0)
            out = model.get_output_embeddings()
            if out is not None and not tied:
                out.weight[old:] = out.weight[:old].mean(dim=0)
                if getattr(out, "bias", None) is not None:
                    out.bias[old:] = out.bias[:old].mean()
    return missing


def embedding_module_names(model) -> list[str]:
    """The short names of the model's input and output embedding modules (``embed_tokens``, ``lm_head`` for
    Llama/Qwen2; other architectures name them otherwise): what LoRA's ``modules_to_save`` takes."""
    targets = [m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None]
    return sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if any(mod is t for t in targets)})


def embeddings_tied(model) -> bool:
    out = model.get_output_embeddings()
    return out is not None and out.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
