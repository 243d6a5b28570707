"""Reward terms as tables (diversity, format, consensus, correctness, critic), the alternating schedule,
RewardParams, and the TRL adapters run through a real GRPOTrainer's reward path with a real tokenizer."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pr1d.config import Config
from pr1d.evaluate.grading import GradeWeights
from pr1d.params import RewardParams, params_from
from pr1d.train.critic import CriticResult
from pr1d.train.rewards import (
    AlternatingSchedule,
    consensus_counts,
    consensus_reward,
    correctness_reward,
    critic_reward,
    decode_completions,
    diversity_reward,
    format_reward,
    grade_reward,
    make_reward_funcs,
)


def block(*paths: str, summary: str = "Both agree.") -> str:
    return "<Parallel>" + "".join(f"<Path>{p}</Path>" for p in paths) + f"<Summary>{summary}</Summary></Parallel>"


P1 = "12 + 23 = 35. So the result is 35."
P2 = "Count on from 23 by 12: 35."
P_OTHER = "Sixty minus nine gives fifty one"
GOOD = block(P1, P2) + "\nFinal Answer: 35"
SEQ = "12 + 23 = 35\nFinal Answer: 35"

# --- diversity ------------------------------------------------------------------------------------

DIVERSITY = [
    ("two copies of one path", block(P1, P1) + "\nFinal Answer: 35", 0.0),
    ("three copies", block(P1, P1, P1) + "\nFinal Answer: 35", 0.0),
    ("same words, other case and punctuation", block("Add 12 and 23: 35.", "add 12 AND 23 35") + "\nFinal Answer: 35",
     0.0),
    ("no word in common", block("alpha beta", "gamma delta") + "\nFinal Answer: 1", 1.0),
    # {a, b, a b} vs {a, c, a c}: Jaccard 1/5, so diversity 0.8.
    ("one shared word of three features", block("a b", "a c") + "\nFinal Answer: 1", 0.8),
    ("mean over blocks", block("x y", "x y") + " then " + block("alpha beta", "gamma delta") + "\nFinal Answer: 1",
     0.5),
    ("sequential: no paths", SEQ, 0.0),
    ("malformed block: no trusted paths", "<Parallel><Path>a</Path><Path>b</Path></Parallel>\nFinal Answer: 1", 0.0),
    # Cut off inside a second block: the structure does not parse, so not even the first block is trusted.
    ("truncated inside a later block", block("alpha beta", "gamma delta") + " and then <Parallel><Path>x", 0.0),
]


@pytest.mark.parametrize(("name", "text", "expected"), DIVERSITY, ids=[c[0] for c in DIVERSITY])
def test_diversity_table(name, text, expected):
    assert diversity_reward(text) == pytest.approx(expected)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="abc xyz0123", min_size=1).filter(str.strip), min_size=2, max_size=4))
def test_diversity_is_bounded_and_zero_for_copies(paths):
    text = block(*paths) + "\nFinal Answer: 1"
    assert 0.0 <= diversity_reward(text) <= 1.0
    assert diversity_reward(block(paths[0], paths[0]) + "\nFinal Answer: 1") == 0.0


# --- format ---------------------------------------------------------------------------------------

MALFORMED = [
    ("one path", "<Parallel><Path>a 1</Path><Summary>s</Summary></Parallel>\nFinal Answer: 1"),
    ("no summary", "<Parallel><Path>a</Path><Path>b</Path></Parallel>\nFinal Answer: 1"),
    ("empty path", "<Parallel><Path> </Path><Path>b</Path><Summary>s</Summary></Parallel>\nFinal Answer: 1"),
    ("text between paths", "<Parallel><Path>a</Path> so <Path>b</Path><Summary>s</Summary></Parallel>\nFinal Answer: 1"),
    ("nested block", "<Parallel><Path>a</Path><Parallel><Path>b</Path>\nFinal Answer: 1"),
    ("unclosed path", "<Parallel><Path>a<Path>b</Path><Summary>s</Summary></Parallel>\nFinal Answer: 1"),
    ("summary first", "<Parallel><Summary>s</Summary><Path>a</Path><Path>b</Path></Parallel>\nFinal Answer: 1"),
    ("answer inside a path", "<Parallel><Path>Final Answer: 1</Path><Path>b</Path><Summary>s</Summary></Parallel>\n"
     "Final Answer: 1"),
    ("no final answer", block("a", "b")),
    ("text after the answer", block("a", "b") + "\nFinal Answer: 1\nmore"),
    ("tags stripped by skip_special_tokens", "12 + 23 = 35. So the result is 35.Count on: 35.Both agree.\n"
     "Final Answer: 35"),
]


@pytest.mark.parametrize(("name", "text"), MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_gets_zero_format_reward(name, text):
    assert format_reward(text) == 0.0
    assert format_reward(text, require_parallel=False) == (1.0 if name == "tags stripped by skip_special_tokens"
                                                           else 0.0)


@pytest.mark.parametrize(("text", "require_parallel", "expected"), [
    (GOOD, True, 1.0), (GOOD, False, 1.0), (SEQ, True, 0.0), (SEQ, False, 1.0),
])
def test_valid_format(text, require_parallel, expected):
    assert format_reward(text, require_parallel=require_parallel) == expected


# --- consensus, correctness, critic, grade ----------------------------------------------------------

CONSENSUS = [
    # paths -> (answers, majority, agreeing, total)
    (["so 35", "gives 35", "it is 36"], (("35", "35", "36"), "35", 2, 3)),
    (["35", "36"], (("35", "36"), "35", 1, 2)),  # tie: the earliest path's answer
    (["no number", "still none"], ((None, None), None, 0, 2)),
    (["1,234 apples", "1234.0", "$1,234."], (("1234", "1234", "1234"), "1234", 3, 3)),
    (["7", "no number", "8", "8"], (("7", None, "8", "8"), "8", 2, 4)),
]


@pytest.mark.parametrize(("paths", "expected"), CONSENSUS)
def test_consensus_counts_are_exact(paths, expected):
    (c,) = consensus_counts(block(*paths) + "\nFinal Answer: 1")
    assert (c.answers, c.majority, c.agreeing, c.total) == expected


def test_consensus_counts_per_block_and_reward_on_the_last():
    text = block("10", "10") + " " + block("so 35", "so 36", "so 35") + "\nFinal Answer: 35"
    assert [(c.majority, c.agreeing, c.total) for c in consensus_counts(text)] == [("10", 2, 2), ("35", 2, 3)]
    assert consensus_reward(text) == pytest.approx(2 / 3)
    assert consensus_counts("<Parallel><Path>3</Path></Parallel>") == ()
    assert consensus_reward(SEQ) == 0.0


@pytest.mark.parametrize(("text", "answer", "expected"), [
    (GOOD, "35", 1.0), (GOOD, "36", 0.0), ("Final Answer: $35.", "35", 1.0), ("35", "35", 0.0),
    ("<Parallel><Path>Final Answer: 35", "35", 0.0),  # the answer of a truncated path is no final answer
])
def test_correctness_table(text, answer, expected):
    assert correctness_reward(text, answer) == expected


@pytest.mark.parametrize(("result", "expected"), [
    (CriticResult(True, 0.97), 1.0), (CriticResult(False, 0.99), 0.0), (None, None),
])
def test_critic_reward_table(result, expected):
    assert critic_reward(result) == expected


def test_grade_reward_is_the_grading_score():
    assert grade_reward(GOOD, "35") == 1.0
    assert grade_reward(GOOD, "35", finished=False) == pytest.approx(0.9)
    only = GradeWeights(correctness=0, parallel_format=1, consensus_confidence=0, compliance=0)
    assert grade_reward(SEQ, "35", weights=only) == 0.0


# --- alternating schedule -------------------------------------------------------------------------

SCHEDULE = [
    # (enabled, window, every, step, bonus)
    (False, 10, 5, 0, True), (False, 10, 5, 123, True),
    (True, 10, 5, 0, False), (True, 10, 5, 9, False), (True, 10, 5, 39, False),
    (True, 10, 5, 40, True), (True, 10, 5, 49, True), (True, 10, 5, 50, False),
    (True, 10, 5, 89, False), (True, 10, 5, 90, True),
    (True, 1, 2, 0, False), (True, 1, 2, 1, True), (True, 1, 2, 2, False),
    (True, 4, 1, 0, True), (True, 4, 1, 7, True),  # every window is a bonus window
    (True, 10, 5, -3, False),  # before the first step: the first window
]


@pytest.mark.parametrize(("enabled", "window", "every", "step", "bonus"), SCHEDULE)
def test_alternating_schedule_table(enabled, window, every, step, bonus):
    s = AlternatingSchedule(enabled, window, every)
    assert s.bonus_active(step) is bonus
    assert s.phase(step) == ("parallel" if bonus else "accuracy")


def test_alternating_schedule_share_of_bonus_steps():
    s = AlternatingSchedule(True, 10, 5)
    assert sum(s.bonus_active(k) for k in range(1000)) == 200  # Parallel-R1's 80/20


@pytest.mark.parametrize(("window", "every", "match"), [(0, 5, "alternate_window"), (10, 0, "alternate_every")])
def test_alternating_schedule_refuses_bad_values(window, every, match):
    with pytest.raises(ValueError, match=match):
        AlternatingSchedule(True, window, every)


# --- RewardParams ---------------------------------------------------------------------------------

def test_config_section_is_the_reward_params():
    """One declaration: the [rewards] section is RewardParams, and every field says what it does."""
    assert Config().rewards == RewardParams()
    assert params_from(RewardParams, RewardParams().model_dump(mode="json"), "rewards") == RewardParams()
    assert all(f.description for f in RewardParams.model_fields.values() if f.annotation is not GradeWeights)


@pytest.mark.parametrize(("data", "match"), [
    ({"grade_wieght": 1.0}, r"unknown key.*grade_wieght.*known keys"),
    ({"format_weight": -1.0}, "format_weight: Input should be greater than or equal to 0"),
    ({"grade_weight": 0, "format_weight": 0, "diversity_weight": 0, "critic_weight": 0}, "set grade_weight"),
    ({"alternate_every": 0}, "alternate_every"),
    ({"guardrails": "forbidden"}, "list of phrases"),
    ({"critic_redis_url": "localhost:6379"}, "redis://"),
    ({"grading": {"correctness": 0, "parallel_format": 0, "consensus_confidence": 0, "compliance": 0}},
     "sum to more than 0"),
])
def test_reward_config_errors_say_how_to_fix(data, match):
    with pytest.raises(ValueError, match=match):
        params_from(RewardParams, data, "rewards")


# --- TRL adapters ---------------------------------------------------------------------------------

def _call(fn, texts, step=0, **extra):
    n = len(texts)
    return fn(prompts=["q"] * n, completions=texts, completion_ids=None, answer=["35"] * n, question=["q"] * n,
              tier=["easy"] * n, trainer_state=SimpleNamespace(global_step=step), **extra)


def test_funcs_have_distinct_names_and_weight_zero_terms_are_left_out():
    names = [f.__name__ for f in make_reward_funcs(RewardParams(), None)]
    assert names == ["reward_grade", "reward_format", "reward_diversity"]  # no critic client: no critic term
    names = [f.__name__ for f in make_reward_funcs(RewardParams(diversity_weight=0, alternating=True), None,
                                                   critic=object())]
    assert names == ["reward_grade", "reward_format", "reward_parallel_bonus", "reward_critic"]


def test_weights_are_applied_inside_each_function():
    funcs = {f.__name__: f for f in make_reward_funcs(RewardParams(grade_weight=2.0, format_weight=0.5,
                                                                   diversity_weight=0.25), None)}
    diverse = block("alpha beta", "gamma delta 35") + "\nFinal Answer: 35"
    assert _call(funcs["reward_grade"], [GOOD, SEQ]) == pytest.approx([2.0, 2 * 0.8])
    assert _call(funcs["reward_format"], [GOOD, SEQ]) == [0.5, 0.0]
    assert _call(funcs["reward_diversity"], [diverse, SEQ]) == pytest.approx([0.25, 0.0])


@pytest.mark.parametrize(("step", "bonus"), [(0, False), (39, False), (40, True), (49, True), (50, False)])
def test_alternating_gates_the_parallel_terms_by_trainer_step(step, bonus):
    funcs = {f.__name__: f for f in make_reward_funcs(RewardParams(alternating=True), None)}
    for name in ("reward_format", "reward_diversity", "reward_parallel_bonus"):
        got = _call(funcs[name], [GOOD, SEQ], step=step)
        assert (got == [None, None]) is (not bonus), name
    assert _call(funcs["reward_parallel_bonus"], [GOOD, SEQ], step=step) == ([0.5, 0.0] if bonus else [None, None])
    assert _call(funcs["reward_grade"], [GOOD], step=step) == [1.0]  # accuracy terms never pause
    # step_fn overrides trainer_state (for trainers that segment training into several runs).
    via_fn = {f.__name__: f for f in make_reward_funcs(RewardParams(alternating=True), None, step_fn=lambda: step)}
    assert _call(via_fn["reward_format"], [GOOD], step=10_000) == ([1.0 * 0.2] if bonus else [None])


def test_missing_dataset_column_is_a_clear_error():
    (grade_fn, *_) = make_reward_funcs(RewardParams(), None)
    with pytest.raises(ValueError, match="dataset column 'answer'"):
        grade_fn(prompts=["q"], completions=[GOOD], completion_ids=None)


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("transformers")
    from pr1d.train.tokenizer import build_tokenizer

    corpus = [GOOD, SEQ, P1, P2, "Final Answer: 35"] * 40
    return build_tokenizer(corpus)


def _ids(tok, text: str, *, eos: bool = True, pad: int = 0) -> list[int]:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return ids + ([tok.eos_token_id] if eos else []) + [tok.pad_token_id] * pad


def test_decode_keeps_the_tags_that_trl_strips(tokenizer):
    ids = _ids(tokenizer, GOOD, pad=3)
    assert tokenizer.convert_tokens_to_ids("<Parallel>") in ids  # the tags are single special tokens
    trl_text = tokenizer.decode(ids, skip_special_tokens=True)  # what TRL hands reward functions
    assert "<Path>" not in trl_text and format_reward(trl_text) == 0.0
    (text, finished), (cut, cut_finished) = decode_completions(tokenizer, [ids, _ids(tokenizer, GOOD, eos=False)])
    assert (text, finished) == (GOOD, True)
    assert (cut, cut_finished) == (GOOD, False)


def test_real_grpo_trainer_reward_path(tokenizer, tmp_path):
    """Our functions inside TRL's own `_calculate_rewards`: tags survive, a dropped critic term is NaN."""
    torch = pytest.importorskip("torch")
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from pr1d.train.critic import CriticClient

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id))
    rows = [{"prompt": "How much is 12 + 23?", "answer": "35", "question": "How much is 12 + 23?", "tier": "easy"}] * 4
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    critic = CriticClient(dead, timeout=0.5)
    funcs = make_reward_funcs(RewardParams(), tokenizer, critic=critic)
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2,
                      max_completion_length=8, bf16=False, use_cpu=True, gradient_checkpointing=False,
                      report_to=[], save_strategy="no", max_steps=1, logging_steps=1)
    trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer)
    assert trainer.reward_func_names == ["reward_grade", "reward_format", "reward_diversity", "reward_critic"]

    completions = [GOOD, SEQ]
    ids = [_ids(tokenizer, t) for t in completions]
    trl_texts = [tokenizer.decode(i, skip_special_tokens=True) for i in ids]
    per_func = trainer._calculate_rewards(rows[:2], [r["prompt"] for r in rows[:2]], trl_texts, ids)
    grade_col, format_col, diversity_col, critic_col = per_func.T.tolist()
    assert grade_col == pytest.approx([1.0, 0.8])  # parallel answer: every column; sequential: no format/consensus
    assert format_col == pytest.approx([0.2, 0.0])  # the tags survived TRL's decoding
    assert diversity_col[0] > 0 and diversity_col[1] == 0.0
    assert all(torch.isnan(torch.tensor(critic_col)))  # dropped, not 0
    assert funcs.metrics.critic_unavailable_total == 1

    # One real training step: TRL logs each term under its function's name, and the critic term as NaN.
    trainer.train()
    logged = trainer.state.log_history[0]
    for name in ("reward_grade", "reward_format", "reward_diversity"):
        assert f"rewards/{name}/mean" in logged
    assert logged["critic_unavailable_total"] >= 1
    critic.close()
