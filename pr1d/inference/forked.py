"""The forked parallel rollout engine: Parallel-R1 generation that forks paths from a shared prefix KV cache.

Public API (stable: the backtest, the GRPO trainer and ``pr1d eval gsm-lite --policy parallel`` use it)::

    forked_generate(model, tokenizer, prompts, policy, *, num_samples=1, seed=None, batch_size=32,
                    mode="fork", min_path_tokens=0, stats=None) -> list[ParallelCompletion]
    generate_paths(model, tokenizer, prefixes, policy, *, seed=None, mode="fork", min_path_tokens=0,
                   stats=None) -> list[list[list[int]]]

``forked_generate`` returns ``len(prompts) * num_samples`` completions, prompt-major (the samples of
prompt ``i`` are at ``i * num_samples + j``, the layout TRL's GRPO groups use). ``prompts`` are strings
(tokenised with the tokenizer's BOS, as :func:`pr1d.inference.generate.generate` does) or token-id lists.
Each :class:`ParallelCompletion` is a :class:`pr1d.inference.generate.Completion` (text with tags,
``n_tokens``, ``finished``) plus the token ids, which of them the engine wrote rather than sampled, and
the block and path counts. ``generate_paths`` runs only the fork of one block (prefixes ending with
``<Parallel>``) and returns each prefix's path contents: what the benchmark times and the tests compare.

How an answer is generated (``policy`` is a :class:`pr1d.inference.policy.ParallelExecutionPolicy`):

1. *Trunk.* All answers of a batch decode in lockstep (left-padded, one attention mask and per-row
   position ids) until each has emitted EOS, spent ``max_new_tokens``, or emitted ``<Parallel>``.
   An answer that opened a block waits (its cache row gets masked holes) until the others stop too.
2. *Fork.* The cache rows of the waiting answers are copied ``branch_count`` times along the batch
   dimension (mode ``fork``: the prefix is never recomputed), ``<Path>`` is fed to every copy, and all
   paths of all answers decode as one batch until each emits ``</Path>`` (or EOS, read as ``</Path>``)
   or reaches its token cap, where the engine closes it.
3. *Summary.* Each waiting answer's cache gets ``<Path>p1</Path>…<Path>pk</Path><Summary>`` and the
   model writes the summary until ``</Summary>`` (EOS or the cap close it too); the engine adds
   ``</Parallel>`` and the answer goes back to the trunk, where it may open another block, up to
   ``max_parallel_blocks``; after that ``<Parallel>`` is suppressed.

Structure is enforced, whatever the model: tags the grammar does not allow at a position are
suppressed (only ``<Parallel>`` in the trunk, only ``</Path>`` in a path, only ``</Summary>`` in a
summary), a path or summary cannot close while its content is blank, and a block is opened only when
``policy.max_new_tokens`` still has room for it. So ``parallel_format.parse(text,
require_final_answer=False)`` can fail only on content: ``Final Answer:`` written inside a block is the
model's and is kept (the format rewards penalise it). A prompt that ends with ``<Parallel>`` starts inside
a block: the engine forks at once and the completion text starts with ``<Path>``.

Modes (the same tokens under greedy decoding; the benchmark compares their speed):

* ``fork`` — paths share the prefix's KV cache (copied rows; no recompute).
* ``recompute`` — the same batched fork, but every path re-prefills the whole prefix, as separate
  concurrent requests per path (Parallel-R1's serving) amount to.
* ``sequential`` — each path alone, one after another, each from a fresh prefill of the prefix, as a
  plain ``generate()`` loop does.

Sampling: temperature 0 is greedy (argmax); otherwise ``softmax(logits / T)`` with nucleus ``top_p``,
sampled with the Gumbel-max trick from a seeded ``torch.Generator`` *per stream*: one stream per
answer's trunk (and its summaries), one per path of each block, each seeded from ``(seed, answer index,
block, path)``. So the output for a seed does not depend on ``batch_size``, on the mode or on which
other prompts share the batch; with ``seed=None`` the base seed is drawn from torch's global RNG.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import Cache, DynamicLayer

from pr1d.data.parallel_format import (
    PARALLEL_CLOSE,
    PARALLEL_OPEN,
    PATH_CLOSE,
    PATH_OPEN,
    SUMMARY_CLOSE,
    SUMMARY_OPEN,
    TAGS,
)
from pr1d.inference.generate import Completion
from pr1d.inference.policy import ParallelExecutionPolicy, min_block_tokens
from pr1d.inference.prompting import render_prompts

__all__ = ["MODES", "ParallelCompletion", "RolloutStats", "forked_generate", "generate_paths"]

MODES = ("fork", "recompute", "sequential")


@dataclass(frozen=True)
class ParallelCompletion(Completion):
    """A :class:`Completion` from the engine, with its tokens and its Parallel structure.

    ``token_ids`` are the new tokens in order (EOS excluded; ``len == n_tokens``); ``forced[i]`` is True
    where the engine wrote token ``i`` (``<Path>``, ``<Summary>``, ``</Parallel>``, a close at a cap, a
    close written where the model chose EOS) rather than the model sampling it — a trainer may mask
    those out of the policy loss. ``paths_per_block`` has one entry per block the engine ran, and
    ``path_token_ids[b][j]`` is the content (tags excluded) of path ``j`` of block ``b``.
    """

    token_ids: tuple[int, ...] = ()
    forced: tuple[bool, ...] = ()
    n_blocks: int = 0
    paths_per_block: tuple[int, ...] = ()
    path_token_ids: tuple[tuple[tuple[int, ...], ...], ...] = ()


@dataclass
class RolloutStats:
    """Counters one call adds to (pass the same object to several calls to sum them)."""

    forward_calls: int = 0
    fed_tokens: int = 0  # real (unpadded) tokens run through the model, prefixes and forced tags included
    path_phase_s: float = 0.0  # wall time of fork + path decoding (the part the modes differ in)
    blocks: int = 0
    path_tokens: int = 0  # path content tokens generated
    total_s: float = 0.0


# --------------------------------------------------------------------------------------------------
# Vocabulary: tag ids and the per-state suppression table
# --------------------------------------------------------------------------------------------------

# Decoding states of one sequence; each picks a row of the ban table built by _vocab().
_TRUNK_OPEN, _TRUNK_SHUT, _PATH_BLANK, _PATH, _SUMMARY_BLANK, _SUMMARY = range(6)


@dataclass(frozen=True)
class _Vocab:
    eos: int
    pad: int
    par_open: int
    par_close: int
    path_open: int
    path_close: int
    sum_open: int
    sum_close: int
    blank: frozenset[int]  # tokens that decode to whitespace only (or to nothing)
    bans: torch.Tensor  # [6, V] bool: the tokens suppressed in each decoding state


def _tag_id(tokenizer, tag: str) -> int:
    ids = tokenizer.encode(tag, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(
            f"the tokenizer splits {tag!r} into {len(ids)} tokens; the engine needs each Parallel tag as one "
            "special token: build the tokenizer with pr1d.train.tokenizer.build_tokenizer or add the six "
            "tags of pr1d.data.parallel_format.TAGS as special tokens"
        )
    return ids[0]


def _vocab(tokenizer, vocab_size: int, device: torch.device) -> _Vocab:
    tag = {t: _tag_id(tokenizer, t) for t in TAGS}
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; set one so that answers can end")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    n = min(vocab_size, len(tokenizer))
    texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False)
    blank = frozenset(i for i, t in enumerate(texts) if not t.strip()) - set(tag.values())
    all_tags = list(tag.values())
    bans = torch.zeros(6, vocab_size, dtype=torch.bool)
    # Trunk: only <Parallel> may open a block; the other five tags have no place at the top level.
    bans[_TRUNK_OPEN, [t for t in all_tags if t != tag[PARALLEL_OPEN]]] = True
    bans[_TRUNK_SHUT, all_tags] = True  # block limit reached or no room left for a block
    # Inside a path only </Path> is structure; while the path is blank it may not close at all
    # (an empty path is a format error), and EOS (read as a close) is held back too.
    bans[_PATH, [t for t in all_tags if t != tag[PATH_CLOSE]]] = True
    bans[_PATH_BLANK, all_tags + [tokenizer.eos_token_id]] = True
    bans[_SUMMARY, [t for t in all_tags if t != tag[SUMMARY_CLOSE]]] = True
    bans[_SUMMARY_BLANK, all_tags + [tokenizer.eos_token_id]] = True
    return _Vocab(
        eos=tokenizer.eos_token_id,
        pad=pad,
        par_open=tag[PARALLEL_OPEN],
        par_close=tag[PARALLEL_CLOSE],
        path_open=tag[PATH_OPEN],
        path_close=tag[PATH_CLOSE],
        sum_open=tag[SUMMARY_OPEN],
        sum_close=tag[SUMMARY_CLOSE],
        blank=blank,
        bans=bans.to(device),
    )


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------


def _stream_seed(base: int, *key: int) -> int:
    """A 63-bit seed for one sampling stream, stable across runs, platforms and batchings."""
    digest = hashlib.blake2b(repr((base, *key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _generator(policy: ParallelExecutionPolicy, device: torch.device, base: int, *key: int):
    if policy.greedy:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(_stream_seed(base, *key))
    return gen


def _choose(
    logits: torch.Tensor,
    banned: torch.Tensor,
    policy: ParallelExecutionPolicy,
    generators: Sequence[torch.Generator | None],
) -> list[int]:
    """Next token per row: argmax at temperature 0, else a nucleus sample drawn from each row's stream."""
    logits = logits.float().masked_fill(banned, float("-inf"))
    if policy.greedy:
        return logits.argmax(-1).tolist()
    logp = torch.log_softmax(logits / policy.temperature, dim=-1)
    if policy.top_p < 1.0:
        sorted_logp, order = logp.sort(dim=-1, descending=True)
        probs = sorted_logp.exp()
        # Keep the smallest prefix whose mass reaches top_p: a token goes when the mass before it does.
        drop_sorted = (probs.cumsum(-1) - probs) >= policy.top_p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logp = logp.masked_fill(drop, float("-inf"))
    # Gumbel-max: argmax(log p + G) is an exact sample of p; one uniform vector per row from that row's
    # own generator is what makes a stream independent of the batch it runs in.
    vocab = logits.shape[-1]
    uniform = torch.stack([torch.rand(vocab, generator=g, device=logits.device) for g in generators])
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))
    return (logp + gumbel).argmax(-1).tolist()


# --------------------------------------------------------------------------------------------------
# Lanes: rows decoding in lockstep over one KV cache
# --------------------------------------------------------------------------------------------------


class _SlabLayer(DynamicLayer):
    """A DynamicLayer that writes new keys/values into spare room instead of concatenating.

    ``DynamicLayer.update`` copies the whole layer every step (``torch.cat``): on CPU that was three
    quarters of a decode step for 4 rows × 1k tokens of the benchmark's 25M model. Here the storage grows
    by doubling (plus ``reserve`` slots) and a step writes only its own slots. ``keys``/``values`` stay
    views of the used part, so attention, masks and ``get_seq_length`` see a plain DynamicLayer.
    """

    def __init__(self, reserve: int = 0) -> None:
        super().__init__()
        self.reserve = reserve
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        used = 0 if self._keys is None else self.keys.shape[-2]
        need = used + key_states.shape[-2]
        if self._keys is None or need > self._keys.shape[-2]:
            room = max(need + self.reserve, 2 * used, 64)
            keys = key_states.new_empty((*key_states.shape[:-2], room, key_states.shape[-1]))
            values = value_states.new_empty((*value_states.shape[:-2], room, value_states.shape[-1]))
            if used:
                keys[..., :used, :] = self.keys
                values[..., :used, :] = self.values
            self._keys, self._values = keys, values
        self._keys[..., used:need, :] = key_states
        self._values[..., used:need, :] = value_states
        self.keys, self.values = self._keys[..., :need, :], self._values[..., :need, :]
        return self.keys, self.values

    # The inherited batch and crop operations rewrite keys/values; the storage then restarts from them.
    def _adopt(self) -> None:
        self._keys, self._values = (self.keys, self.values) if self.get_seq_length() else (None, None)

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        self._adopt()

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._adopt()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._adopt()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._adopt()


def _new_cache(model, reserve: int) -> Cache:
    """An empty KV cache of slab layers for ``model`` (full attention only)."""
    config = model.config.get_text_config(decoder=True)
    kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"}:
        raise ValueError(
            f"the forked engine supports full-attention models only, this one has {sorted(kinds)} layers; "
            "use a Llama-style model without sliding-window or linear-attention layers"
        )
    return Cache(layers=[_SlabLayer(reserve) for _ in range(config.num_hidden_layers)])


def _select_cache(model, cache: Cache, rows: torch.Tensor, cols: torch.Tensor | None, reserve: int) -> Cache:
    """A new cache holding ``rows`` (repeats allowed: that is the fork) and, if given, only the slots ``cols``.

    This is the prefix reuse: the rows' keys and values are copied, never recomputed.
    """
    new = _new_cache(model, reserve)
    for layer, target in zip(cache.layers, new.layers, strict=True):
        if not layer.is_initialized:
            continue
        keys, values = layer.keys.index_select(0, rows), layer.values.index_select(0, rows)
        if cols is not None:
            keys, values = keys.index_select(2, cols), values.index_select(2, cols)
        target.update(keys, values)
    return new


class _Lanes:
    """A batch of sequences decoding in lockstep over one KV cache.

    Every feed appends the same number of slots to every row: a row with fewer (or no) new tokens gets
    masked pad slots in front of them. The 2D attention mask therefore has holes, and positions are
    per-row counters of real tokens, so a row computes exactly what it would alone (RoPE sees no gap).
    """

    def __init__(self, model, vocab: _Vocab, device: torch.device, stats: RolloutStats, reserve: int) -> None:
        self.model = model
        self.vocab = vocab
        self.device = device
        self.stats = stats
        self.reserve = reserve  # slots each cache layer keeps spare: the most this lane will still feed
        self.cache = _new_cache(model, reserve)
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=device)
        self.next_pos = torch.zeros(0, dtype=torch.long, device=device)
        self.rows = 0

    def add_rows(self, n: int) -> None:
        """Start ``n`` empty rows (only before the first feed)."""
        assert self.cache.get_seq_length() == 0
        self.rows += n
        self.mask = torch.zeros(self.rows, 0, dtype=torch.long, device=self.device)
        self.next_pos = torch.zeros(self.rows, dtype=torch.long, device=self.device)

    def fork(self, rows: list[int], reserve: int) -> _Lanes:
        """New lanes whose row ``i`` continues this lane's row ``rows[i]``; the prefix KV is copied, not recomputed."""
        child = _Lanes(self.model, self.vocab, self.device, self.stats, reserve)
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        child.cache = _select_cache(self.model, self.cache, index, None, reserve)
        child.mask = self.mask.index_select(0, index)
        child.next_pos = self.next_pos.index_select(0, index)
        child.rows = len(rows)
        return child

    def keep(self, rows: list[int]) -> None:
        """Drop every row not in ``rows`` (finished ones) and the slots no remaining row attends to."""
        if len(rows) == self.rows:
            return
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        mask = self.mask.index_select(0, index)
        used = mask.bool().any(0)
        cols = None if bool(used.all()) else used.nonzero().squeeze(1)
        self.cache = _select_cache(self.model, self.cache, index, cols, self.reserve)
        self.mask = mask if cols is None else mask.index_select(1, cols)
        self.next_pos = self.next_pos.index_select(0, index)
        self.rows = len(rows)

    @torch.no_grad()
    def feed(self, chunks: Sequence[Sequence[int]]) -> torch.Tensor:
        """Run each row's new tokens through the model; returns next-token logits ``[rows, V]``.

        Only rows with a non-empty chunk get meaningful logits.
        """
        width = max(len(c) for c in chunks)
        if width == 1 and all(chunks):
            ids = torch.tensor([c[0] for c in chunks], dtype=torch.long, device=self.device).unsqueeze(1)
            new_mask = torch.ones(self.rows, 1, dtype=torch.long, device=self.device)
            positions = self.next_pos.unsqueeze(1).clone()
            self.next_pos += 1
            real = self.rows
        else:
            ids = torch.full((self.rows, width), self.vocab.pad, dtype=torch.long)
            new_mask = torch.zeros(self.rows, width, dtype=torch.long)
            positions = torch.zeros(self.rows, width, dtype=torch.long)
            starts = self.next_pos.tolist()
            real = 0
            for r, chunk in enumerate(chunks):
                n = len(chunk)
                # Pad slots take the row's next position; they are masked, so the value only has to be valid.
                positions[r, :] = starts[r]
                if n:
                    ids[r, width - n :] = torch.tensor(chunk, dtype=torch.long)
                    new_mask[r, width - n :] = 1
                    positions[r, width - n :] = torch.arange(starts[r], starts[r] + n)
                real += n
            ids, new_mask, positions = ids.to(self.device), new_mask.to(self.device), positions.to(self.device)
            self.next_pos += new_mask.sum(1)
        self.mask = torch.cat([self.mask, new_mask], dim=1)
        out = self.model(
            input_ids=ids,
            attention_mask=self.mask,
            position_ids=positions,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.stats.forward_calls += 1
        self.stats.fed_tokens += real
        return out.logits[:, -1, :]


# --------------------------------------------------------------------------------------------------
# Per-sequence state
# --------------------------------------------------------------------------------------------------


@dataclass
class _Answer:
    """One answer being generated (a prompt × sample)."""

    index: int  # position in the returned list; also the sampling stream key
    prompt_ids: list[int]
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    forced: list[bool] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)  # appended to tokens, not yet fed to the cache
    state: str = "trunk"  # trunk | summary | wait | done
    finished: bool = False
    paths_per_block: list[int] = field(default_factory=list)
    path_contents: list[tuple[tuple[int, ...], ...]] = field(default_factory=list)
    path_cap: int = 0  # content tokens each path of the open block may take
    summary_len: int = 0
    summary_cap: int = 0
    summary_blank: bool = True
    opened_in_prompt: bool = False  # the prompt ended with <Parallel>: the first block is already open

    def emit(self, token: int, forced: bool) -> None:
        self.tokens.append(token)
        self.forced.append(forced)
        self.pending.append(token)


@dataclass
class _Path:
    """One path of one block being generated."""

    owner: _Answer
    branch: int
    cap: int
    min_tokens: int
    generator: torch.Generator | None
    pending: list[int]
    content: list[int] = field(default_factory=list)
    close_forced: bool = False
    blank: bool = True
    done: bool = False


# --------------------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------------------


def _open_block(answer: _Answer, policy: ParallelExecutionPolicy) -> None:
    """The answer just emitted <Parallel>: size its paths so that the whole block fits the budget."""
    k = policy.branch_count
    left = policy.max_new_tokens - len(answer.tokens)
    # k × (<Path> c </Path>) + <Summary> ≥1 </Summary> </Parallel> must fit in what is left.
    answer.path_cap = max(1, min(policy.max_path_tokens, (left - 2 * k - 4) // k))
    answer.state = "wait"


def _trunk_state(answer: _Answer, policy: ParallelExecutionPolicy) -> int:
    if answer.state == "summary":
        return _SUMMARY_BLANK if answer.summary_blank else _SUMMARY
    left = policy.max_new_tokens - len(answer.tokens)
    may_open = len(answer.paths_per_block) < policy.max_parallel_blocks and left >= min_block_tokens(
        policy.branch_count
    )
    return _TRUNK_OPEN if may_open else _TRUNK_SHUT


def _close_summary(answer: _Answer, voc: _Vocab, sampled_close: bool) -> None:
    answer.emit(voc.sum_close, forced=not sampled_close)
    answer.emit(voc.par_close, forced=True)
    answer.state = "trunk"


def _run_trunk(lanes: _Lanes, answers: list[_Answer], policy: ParallelExecutionPolicy, voc: _Vocab) -> None:
    """Decode trunks and summaries until every answer in ``lanes`` is done or waiting at a <Parallel>.

    ``answers`` is row-aligned with ``lanes`` and shrinks with it as answers finish.
    """
    while answers:
        chunks = [a.pending for a in answers]
        if not any(chunks):
            break
        logits = lanes.feed(chunks)
        for a in answers:
            a.pending = []
        live = [r for r, a in enumerate(answers) if a.state in ("trunk", "summary")]
        if live:
            states = torch.tensor([_trunk_state(answers[r], policy) for r in live], device=lanes.device)
            picks = _choose(logits[live], voc.bans[states], policy, [answers[r].generator for r in live])
            for r, tok in zip(live, picks, strict=True):
                _advance_trunk(answers[r], tok, policy, voc)
        keep = [r for r, a in enumerate(answers) if a.state != "done"]
        if len(keep) < len(answers):
            if keep:
                lanes.keep(keep)
            answers[:] = [answers[r] for r in keep]


def _advance_trunk(a: _Answer, tok: int, policy: ParallelExecutionPolicy, voc: _Vocab) -> None:
    """Take the sampled ``tok`` into answer ``a`` (trunk or summary), closing what a cap or EOS closes."""
    if a.state == "summary":
        if tok in (voc.sum_close, voc.eos):
            # EOS inside a summary ends the summary, not the answer: the block must be closed first.
            _close_summary(a, voc, sampled_close=tok == voc.sum_close)
        else:
            a.emit(tok, forced=False)
            a.summary_len += 1
            a.summary_blank = a.summary_blank and tok in voc.blank
            if a.summary_len >= a.summary_cap:
                _close_summary(a, voc, sampled_close=False)
    elif tok == voc.eos:
        a.state, a.finished = "done", True
    else:
        a.emit(tok, forced=False)
        if tok == voc.par_open:
            _open_block(a, policy)
    # Out of budget in the trunk: stop here, unfinished (a block, once open, always fits: see _open_block).
    if a.state == "trunk" and len(a.tokens) >= policy.max_new_tokens:
        a.state = "done"


def _decode_paths(lanes: _Lanes, paths: list[_Path], policy: ParallelExecutionPolicy, voc: _Vocab) -> None:
    """Decode ``paths`` (row-aligned with ``lanes``) until every path is closed."""
    rows = list(paths)
    while rows:
        logits = lanes.feed([p.pending for p in rows])
        states = torch.tensor(
            [_PATH_BLANK if p.blank or len(p.content) < p.min_tokens else _PATH for p in rows], device=lanes.device
        )
        picks = _choose(logits, voc.bans[states], policy, [p.generator for p in rows])
        for p, tok in zip(rows, picks, strict=True):
            if tok in (voc.path_close, voc.eos):
                # EOS inside a path ends the path, not the answer: the block still needs its summary.
                p.done, p.close_forced = True, tok == voc.eos
                continue
            p.content.append(tok)
            p.pending = [tok]
            p.blank = p.blank and tok in voc.blank
            if len(p.content) >= p.cap:
                p.done, p.close_forced = True, True  # a runaway path: the engine closes it
        keep = [r for r, p in enumerate(rows) if not p.done]
        if len(keep) < len(rows):
            if keep:
                lanes.keep(keep)
            rows = [rows[r] for r in keep]


def _make_paths(
    waiting: list[_Answer], policy: ParallelExecutionPolicy, voc: _Vocab, base_seed: int, device, min_tokens: int
) -> list[_Path]:
    paths = []
    for a in waiting:
        block = len(a.paths_per_block)
        for j in range(policy.branch_count):
            gen = _generator(policy, device, base_seed, a.index, block + 1, j)
            paths.append(_Path(a, j, a.path_cap, min(min_tokens, a.path_cap), gen, [voc.path_open]))
    return paths


def _run_paths(
    lanes: _Lanes,
    answers: list[_Answer],
    policy: ParallelExecutionPolicy,
    voc: _Vocab,
    mode: str,
    base_seed: int,
    min_tokens: int,
) -> list[_Path]:
    """Generate every path of every waiting answer in ``lanes``; returns the paths, answer-major."""
    started = time.perf_counter()
    waiting_rows = [r for r, a in enumerate(answers) if a.state == "wait"]
    waiting = [answers[r] for r in waiting_rows]
    paths = _make_paths(waiting, policy, voc, base_seed, lanes.device, min_tokens)
    k = policy.branch_count
    # Slots a path lane still feeds after its prefix: <Path> and the content up to the cap.
    reserve = max(p.cap for p in paths) + 1
    if mode == "fork":
        child = lanes.fork([r for r in waiting_rows for _ in range(k)], reserve)
        _decode_paths(child, paths, policy, voc)
    elif mode == "recompute":
        child = _Lanes(lanes.model, voc, lanes.device, lanes.stats, reserve)
        child.add_rows(len(paths))
        for p in paths:
            p.pending = p.owner.prompt_ids + p.owner.tokens + p.pending
        _decode_paths(child, paths, policy, voc)
    elif mode == "sequential":
        for p in paths:
            child = _Lanes(lanes.model, voc, lanes.device, lanes.stats, reserve)
            child.add_rows(1)
            p.pending = p.owner.prompt_ids + p.owner.tokens + p.pending
            _decode_paths(child, [p], policy, voc)
    else:  # pragma: no cover - checked by the public functions
        raise ValueError(mode)
    lanes.stats.path_phase_s += time.perf_counter() - started
    lanes.stats.blocks += len(waiting)
    lanes.stats.path_tokens += sum(len(p.content) for p in paths)
    return paths


def _join_block(answer: _Answer, paths: list[_Path], policy: ParallelExecutionPolicy, voc: _Vocab) -> None:
    """Write ``<Path>p1</Path>…<Summary>`` into the answer (fed to the trunk cache next step)."""
    for p in paths:
        answer.emit(voc.path_open, forced=True)
        for tok in p.content:
            answer.emit(tok, forced=False)
        answer.emit(voc.path_close, forced=p.close_forced)
    answer.emit(voc.sum_open, forced=True)
    answer.paths_per_block.append(len(paths))
    answer.path_contents.append(tuple(tuple(p.content) for p in paths))
    answer.state = "summary"
    answer.summary_len, answer.summary_blank = 0, True
    # What is left after the paths holds the summary and its two closing tags (the path cap made sure).
    answer.summary_cap = max(1, min(policy.summary_max_tokens, policy.max_new_tokens - len(answer.tokens) - 2))


# --------------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------------


def _check_args(policy, mode: str, batch_size: int, min_path_tokens: int) -> None:
    if not isinstance(policy, ParallelExecutionPolicy):
        raise TypeError(
            f"policy must be a ParallelExecutionPolicy, got {type(policy).__name__}; build one with "
            "ParallelExecutionPolicy(...) or ParallelExecutionPolicy.from_dict(d)"
        )
    if mode not in MODES:
        raise ValueError(f"mode is {mode!r}; use one of {', '.join(MODES)}")
    if batch_size < 1:
        raise ValueError(f"batch_size is {batch_size}; use >= 1")
    if min_path_tokens < 0:
        raise ValueError(f"min_path_tokens is {min_path_tokens}; use >= 0")


def _encode(tokenizer, prompts: Sequence[str] | Sequence[Sequence[int]]) -> list[list[int]]:
    if not prompts:
        return []
    if all(isinstance(p, str) for p in prompts):
        return [list(ids) for ids in tokenizer(render_prompts(tokenizer, list(prompts)))["input_ids"]]
    out = [list(p) for p in prompts]
    if not all(out) or not all(isinstance(t, int) for p in out for t in p):
        raise TypeError("prompts must all be strings or all be non-empty lists of token ids")
    return out


def _base_seed(seed: int | None) -> int:
    # Without a seed, draw one from torch's global RNG so that a caller's torch.manual_seed still applies.
    return int(torch.randint(0, 2**62, (1,)).item()) if seed is None else int(seed)


class _Mode:
    """Puts the model in eval mode for the call and restores it after."""

    def __init__(self, model) -> None:
        self.model = model
        self.was_training = model.training

    def __enter__(self):
        self.model.eval()
        return self

    def __exit__(self, *exc) -> None:
        if self.was_training:
            self.model.train()


@torch.no_grad()
def forked_generate(
    model,
    tokenizer,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    policy: ParallelExecutionPolicy,
    *,
    num_samples: int = 1,
    seed: int | None = None,
    batch_size: int = 32,
    mode: str = "fork",
    min_path_tokens: int = 0,
    stats: RolloutStats | None = None,
) -> list[ParallelCompletion]:
    """``num_samples`` Parallel-R1 completions per prompt, prompt-major (see the module docstring).

    ``batch_size`` counts answers decoded together in the trunk; their paths (``branch_count`` each)
    decode as one batch. ``min_path_tokens`` holds back a path's close until it has that many tokens
    (benchmarks use it with ``max_path_tokens`` to fix path length). ``stats``, if given, is added to.
    """
    _check_args(policy, mode, batch_size, min_path_tokens)
    if num_samples < 1:
        raise ValueError(f"num_samples is {num_samples}; use >= 1")
    if policy.greedy and num_samples > 1:
        raise ValueError("greedy decoding (temperature 0) gives one completion per prompt; use temperature > 0")
    stats = stats if stats is not None else RolloutStats()
    started = time.perf_counter()
    encoded = _encode(tokenizer, prompts)
    device = next(model.parameters()).device
    base = _base_seed(seed)
    voc = _vocab(tokenizer, model.get_output_embeddings().weight.shape[0], device)
    answers: list[_Answer] = []
    for i, ids in enumerate(encoded):
        for j in range(num_samples):
            index = i * num_samples + j
            answers.append(_Answer(index, ids, None))
    results: list[ParallelCompletion | None] = [None] * len(answers)
    # Shortest first, so a batch carries little left padding (the streams make order irrelevant to output).
    order = sorted(answers, key=lambda a: (len(a.prompt_ids), a.index))
    with _Mode(model):
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            # The trunk lane feeds at most the answers' budgets after the prompts (plus holes, rarely more).
            lanes = _Lanes(model, voc, device, stats, policy.max_new_tokens)
            lanes.add_rows(len(batch))
            for a in batch:
                a.generator = _generator(policy, device, base, a.index, 0, 0)
                a.pending = list(a.prompt_ids)
                if a.prompt_ids[-1] == voc.par_open and policy.max_parallel_blocks > 0:
                    # The caller opened the block: fork right after the prompt is in the cache.
                    a.opened_in_prompt = True
                    _open_block(a, policy)
            active = list(batch)
            while active:
                _run_trunk(lanes, active, policy, voc)
                if not active:
                    break
                paths = _run_paths(lanes, active, policy, voc, mode, base, min_path_tokens)
                for a in active:
                    if a.state == "wait":
                        _join_block(a, [p for p in paths if p.owner is a], policy, voc)
            for a in batch:
                text = tokenizer.decode(a.tokens, skip_special_tokens=False)
                results[a.index] = ParallelCompletion(
                    text=text,
                    n_tokens=len(a.tokens),
                    finished=a.finished,
                    token_ids=tuple(a.tokens),
                    forced=tuple(a.forced),
                    n_blocks=len(a.paths_per_block),
                    paths_per_block=tuple(a.paths_per_block),
                    path_token_ids=tuple(a.path_contents),
                )
    stats.total_s += time.perf_counter() - started
    return results  # type: ignore[return-value]


@torch.no_grad()
def generate_paths(
    model,
    tokenizer,
    prefixes: Sequence[str] | Sequence[Sequence[int]],
    policy: ParallelExecutionPolicy,
    *,
    seed: int | None = None,
    mode: str = "fork",
    min_path_tokens: int = 0,
    stats: RolloutStats | None = None,
) -> list[list[list[int]]]:
    """Fork one block after each prefix and return its paths' content tokens: ``[prefix][path] -> ids``.

    Each prefix must end with ``<Parallel>``. The prefixes are prefilled as one batch (that prefill is
    counted in ``stats`` but not in ``stats.path_phase_s``); then the block's paths are generated as in
    :func:`forked_generate` (same streams: answer ``i``'s paths match ``forked_generate`` of prompt
    ``i``). Path caps come from ``policy.max_path_tokens`` (and the budget, as in a full answer).
    """
    _check_args(policy, mode, 1, min_path_tokens)
    stats = stats if stats is not None else RolloutStats()
    started = time.perf_counter()
    encoded = _encode(tokenizer, prefixes)
    device = next(model.parameters()).device
    voc = _vocab(tokenizer, model.get_output_embeddings().weight.shape[0], device)
    for ids in encoded:
        if ids[-1] != voc.par_open:
            raise ValueError(f"generate_paths needs prefixes that end with {PARALLEL_OPEN}")
    if policy.max_parallel_blocks < 1:
        raise ValueError("policy.max_parallel_blocks is 0: no block may be opened; use >= 1")
    base = _base_seed(seed)
    with _Mode(model):
        answers = [_Answer(i, ids, None) for i, ids in enumerate(encoded)]
        for a in answers:
            _open_block(a, policy)
        lanes = _Lanes(model, voc, device, stats, 0)
        lanes.add_rows(len(answers))
        if mode == "fork":
            # Only the fork reuses the prefill; the other modes prefill per path inside the path phase.
            lanes.feed([a.prompt_ids for a in answers])
        paths = _run_paths(lanes, answers, policy, voc, mode, base, min_path_tokens)
    stats.total_s += time.perf_counter() - started
    k = policy.branch_count
    return [[p.content for p in paths[i * k : (i + 1) * k]] for i in range(len(answers))]
