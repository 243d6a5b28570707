"""How a prompt reaches the model: through the tokenizer's chat template when it has one, else as it is.

Every consumer (SFT records, RL rows, evaluation, the backtest, the forked engine) hands the model the
same *plain* prompt text (``Question: ...\\nAnswer:\\n``, KB context in front when retrieval is on).
A model from the transformers ecosystem usually carries a chat template (Qwen2.5's ``<|im_start|>`` turns):
then the plain prompt becomes the user's turn and the model answers in the assistant's turn, in training
and at inference alike, because the template is read from the tokenizer saved with each model. The tiny
GSM-lite model has no template and sees the plain text, as it was pretrained.

Torch-free: the daemon may render prompts for display.
"""

from __future__ import annotations

from collections.abc import Sequence


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, prompt: str) -> str:
    """``prompt`` as the model should see it before its answer (a string; tokenise it as usual).

    With a chat template: one user turn and the generation prompt. The template's own BOS text is taken
    off when the tokenizer adds a BOS itself, so tokenising the result never gives two.
    """
    if not has_chat_template(tokenizer):
        return prompt
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos) and _adds_bos(tokenizer):
        text = text[len(bos):]
    return text


def render_prompts(tokenizer, prompts: Sequence[str]) -> list[str]:
    if not has_chat_template(tokenizer):
        return list(prompts)
    return [render_prompt(tokenizer, p) for p in prompts]


def _adds_bos(tokenizer) -> bool:
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None:
        return False
    ids = tokenizer("x")["input_ids"]
    return bool(ids) and ids[0] == bos_id
