"""The forked rollout engine and ParallelExecutionPolicy: fork equivalence, blocks, caps, format, CLI."""

from __future__ import annotations

import json

import pytest

from pr1d.data.parallel_format import (
    PARALLEL_OPEN,
    PATH_CLOSE,
    PATH_OPEN,
    SUMMARY_CLOSE,
    SUMMARY_OPEN,
    TAGS,
    measure,
    parse,
)
from pr1d.inference.policy import MAX_BRANCH_COUNT, ParallelExecutionPolicy, PolicyError

# --------------------------------------------------------------------------------------------------
# (e) Policy validation: pure, no torch
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"branch_count": 1}, "at least 2 paths"),
        ({"branch_count": MAX_BRANCH_COUNT + 1}, f"between 2 and {MAX_BRANCH_COUNT}"),
        ({"branch_count": 2.0}, "branch_count must be an integer"),
        ({"branch_count": True}, "branch_count must be an integer"),
        ({"temperature": -0.1}, "use 0 for greedy"),
        ({"temperature": float("nan")}, "finite number"),
        ({"temperature": "0.7"}, "temperature must be a finite number"),
        ({"top_p": 0.0}, r"\(0, 1\]"),
        ({"top_p": 1.5}, r"\(0, 1\]"),
        ({"max_path_tokens": 0}, "at least 1 token"),
        ({"summary_max_tokens": 0}, "at least 1 token"),
        ({"max_parallel_blocks": -1}, "0 \\(never fork\\)"),
        ({"max_new_tokens": 0}, "use >= 1"),
        ({"branch_count": 4, "max_new_tokens": 16}, "needs at least 17 tokens"),
    ],
)
def test_policy_rejects_bad_values_with_a_fix(fields, message):
    with pytest.raises(PolicyError, match=message):
        ParallelExecutionPolicy(**fields)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"branch_count": MAX_BRANCH_COUNT, "max_new_tokens": 3 * MAX_BRANCH_COUNT + 5},
        {"temperature": 0, "top_p": 1},
        {"max_parallel_blocks": 0, "max_new_tokens": 1},  # never forks, so any budget will do
    ],
)
def test_policy_accepts_edge_values(fields):
    policy = ParallelExecutionPolicy(**fields)
    assert isinstance(policy.temperature, float) and isinstance(policy.top_p, float)


def test_policy_wire_form_is_strict_and_round_trips():
    policy = ParallelExecutionPolicy(branch_count=4, temperature=0.5, max_parallel_blocks=3)
    wire = json.loads(json.dumps(policy.to_dict()))
    assert ParallelExecutionPolicy.from_dict(wire) == policy
    assert set(wire) == set(ParallelExecutionPolicy.field_help())
    assert ParallelExecutionPolicy.from_dict({"branch_count": 3}) == ParallelExecutionPolicy(branch_count=3)
    with pytest.raises(PolicyError, match="unknown policy key\\(s\\) branches; expected only: branch_count"):
        ParallelExecutionPolicy.from_dict({"branches": 3})
    with pytest.raises(PolicyError, match="mapping"):
        ParallelExecutionPolicy.from_dict([("branch_count", 3)])
    with pytest.raises(PolicyError, match="unknown policy field"):
        policy.replace(temprature=1.0)
    assert policy.replace(temperature=0).greedy and not policy.greedy


# --------------------------------------------------------------------------------------------------
# The engine (torch from here on)
# --------------------------------------------------------------------------------------------------

torch = pytest.importorskip("torch")

from pr1d.evaluate.gsm_lite import eval_split, format_prompt  # noqa: E402
from pr1d.inference.forked import RolloutStats, forked_generate, generate_paths  # noqa: E402


@pytest.fixture(scope="module")
def trained(tiny_model):
    from pr1d.inference.generate import load_model

    torch.set_num_threads(2)
    return load_model(tiny_model)


def _prompts(n: int, opened: bool) -> list[str]:
    """Problems of different lengths (so batches are left-padded), optionally opening a block."""
    tasks = eval_split(n)  # n per tier: easy, medium and hard questions differ in length
    return [format_prompt(t["question"]) + (PARALLEL_OPEN if opened else "") for t in tasks[::n]][:3]


def _hf_path(model, tok, prompt: str, cap: int) -> list[int]:
    """Reference: one path generated alone by transformers' own greedy generate() from prompt + <Path>."""
    ids = tok(prompt)["input_ids"] + [tok.convert_tokens_to_ids(PATH_OPEN)]
    stop = [tok.convert_tokens_to_ids(PATH_CLOSE), tok.eos_token_id]
    others = [i for i in tok.convert_tokens_to_ids(list(TAGS)) if i not in stop]
    out = model.generate(
        input_ids=torch.tensor([ids]),
        do_sample=False,
        max_new_tokens=cap,
        eos_token_id=stop,
        pad_token_id=tok.pad_token_id,
        suppress_tokens=others,
    )[0, len(ids) :].tolist()
    return out[: out.index(stop[0])] if stop[0] in out else [t for t in out if t not in stop]


def _eager_model(tok, *, prefer=(), avoid=(), seed: int = 0):
    """A randomly initialised tiny Llama whose output head leans +30 towards ``prefer`` and -30 away from ``avoid``.

    This is a model that has learnt *when* to use the tags (as soon as the grammar lets it, or never),
    with content its random weights choose: it never writes 'Final Answer:', so whatever structure the
    completions have is the engine's doing. The forward pass is the real Llama one.
    """
    from pr1d.train.model import make_model

    model = make_model(len(tok), "tiny", tok, seed)
    embed = model.get_input_embeddings().weight
    head = torch.nn.Linear(embed.shape[1], embed.shape[0], bias=True)
    with torch.no_grad():
        head.weight.copy_(embed)
        head.bias.zero_()
        for t in prefer:
            head.bias[tok.convert_tokens_to_ids(t)] = 30.0
        for t in avoid:
            head.bias[tok.convert_tokens_to_ids(t) if t != "eos" else tok.eos_token_id] = -30.0
    model.lm_head = head
    return model.eval()


# (a) Equivalence ----------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 4])
def test_greedy_fork_equals_each_path_generated_alone(trained, k):
    model, tok = trained
    prompts = _prompts(4, opened=True)
    policy = ParallelExecutionPolicy(
        branch_count=k, temperature=0, max_path_tokens=16, summary_max_tokens=4, max_parallel_blocks=1,
        max_new_tokens=3 * k + 16 * k + 10,
    )
    reference = [_hf_path(model, tok, p, 16) for p in prompts]
    assert any(reference), "the reference paths should not all be empty"
    stats = {m: RolloutStats() for m in ("fork", "recompute", "sequential")}
    for mode, st in stats.items():
        paths = generate_paths(model, tok, prompts, policy, mode=mode, stats=st)
        assert paths == [[ref] * k for ref in reference], mode
    # Fork feeds each prefix once; the two baselines re-feed it for every path.
    prefix = sum(len(tok(p)["input_ids"]) for p in prompts)
    assert stats["recompute"].fed_tokens - stats["fork"].fed_tokens == (k - 1) * prefix
    assert stats["sequential"].fed_tokens == stats["recompute"].fed_tokens
    # The full engine writes the same paths into the answer: <Path> ref </Path> × k, then <Summary>.
    path_open, path_close = tok.convert_tokens_to_ids([PATH_OPEN, PATH_CLOSE])
    texts = {}
    for mode in stats:
        done = forked_generate(model, tok, prompts, policy, mode=mode)
        for c, ref in zip(done, reference, strict=True):
            assert c.path_token_ids[0] == (tuple(ref),) * k
            assert list(c.token_ids[: len(ref) + 2]) == [path_open, *ref, path_close]
            assert c.n_blocks == 1 and c.paths_per_block == (k,)
        texts[mode] = [c.text for c in done]
    assert texts["fork"] == texts["recompute"] == texts["sequential"]


def test_sampled_paths_follow_their_own_streams(trained):
    model, tok = trained
    prompts = _prompts(4, opened=True)
    policy = ParallelExecutionPolicy(
        branch_count=4, temperature=1.0, max_path_tokens=8, summary_max_tokens=6, max_parallel_blocks=1,
        max_new_tokens=60,
    )
    run = forked_generate(model, tok, prompts, policy, seed=7, num_samples=2)
    ids = [c.token_ids for c in run]
    # Same seed: same tokens whatever the mode, the batch size or the other prompts in the batch.
    assert [c.token_ids for c in forked_generate(model, tok, prompts, policy, seed=7, num_samples=2, mode="sequential")] == ids
    assert [c.token_ids for c in forked_generate(model, tok, prompts, policy, seed=7, num_samples=2, batch_size=1)] == ids
    alone = forked_generate(model, tok, prompts[:1], policy, seed=7, num_samples=2)
    assert [c.token_ids for c in alone] == ids[:2]  # streams key on (seed, answer index, block, path)
    assert forked_generate(model, tok, prompts, policy, seed=8, num_samples=2) != run
    # Sampling explores: the four paths of a block are not all the same.
    assert all(c.paths_per_block == (4,) for c in run)
    assert any(len(set(c.path_token_ids[0])) > 1 for c in run)


# (b) Several blocks per answer, and the limit --------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3])
def test_several_blocks_per_answer_up_to_the_limit(trained, limit):
    _, tok = trained
    model = _eager_model(tok, prefer=(PARALLEL_OPEN, PATH_CLOSE, SUMMARY_CLOSE))
    policy = ParallelExecutionPolicy(branch_count=3, temperature=1.0, max_parallel_blocks=limit, max_new_tokens=90)
    par_open = tok.convert_tokens_to_ids(PARALLEL_OPEN)
    for c in forked_generate(model, tok, _prompts(2, opened=False), policy, seed=1):
        # The model opens a block whenever allowed: exactly `limit` blocks, then no <Parallel> at all.
        assert c.n_blocks == limit and c.paths_per_block == (3,) * limit
        assert c.token_ids.count(par_open) == limit
        solution = parse(c.text, require_final_answer=False)
        assert len(solution.blocks) == limit and all(len(b.paths) == 3 for b in solution.blocks)
        # After the last block the trunk carried on (suppressed <Parallel>) until the budget ran out.
        assert c.n_tokens == policy.max_new_tokens and not c.finished


def test_blocks_never_overrun_the_token_budget(trained):
    _, tok = trained
    model = _eager_model(tok, prefer=(PARALLEL_OPEN,), avoid=(PATH_CLOSE, SUMMARY_CLOSE, "eos"))
    for budget in (17, 40, 61):
        policy = ParallelExecutionPolicy(
            branch_count=2, temperature=1.0, max_path_tokens=8, summary_max_tokens=8,
            max_parallel_blocks=10, max_new_tokens=budget,
        )
        for c in forked_generate(model, tok, _prompts(2, opened=False), policy, seed=budget):
            assert c.n_tokens <= budget and c.n_blocks >= 1
            parse(c.text, require_final_answer=False)  # every block it opened is complete


# (c) Caps close runaway paths and summaries -----------------------------------------------------------


def test_max_path_tokens_closes_a_runaway_path(trained):
    _, tok = trained
    # A model that never closes a path (nor a summary), nor ends the answer: only the caps stop it.
    model = _eager_model(tok, prefer=(PARALLEL_OPEN,), avoid=(PATH_CLOSE, SUMMARY_CLOSE, "eos"))
    policy = ParallelExecutionPolicy(
        branch_count=2, temperature=1.0, max_path_tokens=5, summary_max_tokens=4,
        max_parallel_blocks=1, max_new_tokens=60,
    )
    path_close, sum_open, sum_close = tok.convert_tokens_to_ids([PATH_CLOSE, SUMMARY_OPEN, SUMMARY_CLOSE])
    for c in forked_generate(model, tok, _prompts(2, opened=True), policy, seed=3):
        ids = list(c.token_ids)
        assert [len(p) for p in c.path_token_ids[0]] == [5, 5]
        assert ids.index(sum_close) - ids.index(sum_open) - 1 == 4  # the summary's content tokens
        # The closes were written by the engine, not sampled: a trainer can mask them out.
        assert all(c.forced[i] for i, t in enumerate(ids) if t in (path_close, sum_close))
        parse(PARALLEL_OPEN + c.text, require_final_answer=False)


# (d) The output parses ------------------------------------------------------------------------------


def test_completions_parse_and_report_their_structure(trained):
    _, tok = trained
    model = _eager_model(tok, prefer=(PARALLEL_OPEN, PATH_CLOSE, SUMMARY_CLOSE), seed=1)
    policy = ParallelExecutionPolicy(branch_count=2, temperature=1.2, max_parallel_blocks=2, max_new_tokens=64)
    done = forked_generate(model, tok, _prompts(2, opened=False), policy, seed=5, num_samples=3)
    assert len(done) == 9
    for c in done:
        solution = parse(c.text, require_final_answer=False)
        assert tuple(len(b.paths) for b in solution.blocks) == c.paths_per_block
        assert [b.paths for b in solution.blocks] == [
            tuple(tok.decode(list(p), skip_special_tokens=False) for p in block) for block in c.path_token_ids
        ]
        assert measure(c.text).structure_ok and measure(c.text).paths_per_block == c.paths_per_block
        assert len(c.token_ids) == len(c.forced) == c.n_tokens
        assert tok.decode(list(c.token_ids), skip_special_tokens=False) == c.text


# (f) The CLI ---------------------------------------------------------------------------------------------


def test_eval_cli_with_parallel_policy(trained, tiny_model, capsys):
    from pr1d.cli import main
    from pr1d.evaluate.gsm_eval import evaluate_tasks

    argv = ["eval", "gsm-lite", "--model", str(tiny_model), "--n", "2", "--k", "2", "--max-new-tokens", "40"]
    assert main([*argv, "--policy", "parallel", "--policy-json", '{"temperature": 0}', "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["policy"] == ParallelExecutionPolicy(temperature=0, max_new_tokens=40).to_dict()
    assert report["n_tasks"] == 6 and {"mean_at_k", "pass_at_k"} <= set(report["tiers"]["overall"])
    # The pretrained model never opens a block, so greedy through the engine is plain greedy decoding.
    assert report["parallel"]["parallel_ratio"] == 0.0
    model, tok = trained
    plain = evaluate_tasks(model, tok, eval_split(2), k=0, max_new_tokens=40)
    assert {t: r["greedy"] for t, r in report["tiers"].items()} == {t: r["greedy"] for t, r in plain["tiers"].items()}
    with pytest.raises(SystemExit) as err:
        main([*argv, "--policy", "parallel", "--policy-json", '{"branches": 4}'])
    assert err.value.code == 2 and "unknown policy key(s) branches" in capsys.readouterr().err
