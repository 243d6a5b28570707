"""pr1d/params.py: the training parameters declared once, torch-free, and run params checked against a plan."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from pr1d.params import (
    STAGE_KEYS,
    LoraParams,
    ParamsError,
    RLParams,
    SFTParams,
    add_param_arguments,
    params_from,
    params_from_args,
    parse_mix,
    validate_run_params,
)
from pr1d.pipeline.plans import PLANS


def test_importing_params_loads_no_training_stack():
    code = ("import sys, pr1d.params, pr1d.pipeline.spec; "
            "print(sorted(m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_lora_fields_are_declared_once():
    for model in (SFTParams, RLParams):
        assert issubclass(model, LoraParams)
        assert {"finetune", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"} <= set(model.model_fields)


def test_every_field_is_documented():
    for model in (SFTParams, RLParams):
        assert all(f.description for f in model.model_fields.values()), model.__name__


@pytest.mark.parametrize(("value", "want"), [
    ("easy=0.35,medium=0.45,hard=0.2", {"easy": 0.35, "medium": 0.45, "hard": 0.2}),
    ({"easy": 0.35, "medium": 0.45, "hard": 0.2}, {"easy": 0.35, "medium": 0.45, "hard": 0.2}),
    (" easy = 1 , ", {"easy": 1.0}),
    ({"hard": 2}, {"hard": 2.0}),
])
def test_parse_mix_reads_both_forms(value, want):
    assert parse_mix(value) == want


@pytest.mark.parametrize(("value", "needle"), [
    ("easy", "not tier=share"), ("easy=-1", "not tier=share"), ({"easy": "lots"}, "not tier=share"),
    ("easy=0,hard=0", "at least one tier"), ("", "at least one tier"), (3, "expected tier=share"),
])
def test_parse_mix_refuses(value, needle):
    with pytest.raises(ValueError, match=needle):
        parse_mix(value)


def test_sft_mix_must_be_gsm_lite_tiers():
    with pytest.raises(ValueError, match="not GSM-lite tiers"):
        SFTParams(mix="expert=1")


def test_models_are_strict():
    with pytest.raises(ParamsError, match=r"sft: unknown key\(s\) \['max_step'\]; known keys: \[.*'max_steps'"):
        params_from(SFTParams, {"max_step": 3}, "sft")
    with pytest.raises(ParamsError, match=r"sft\.max_steps: Input should be a valid integer"):
        params_from(SFTParams, {"max_steps": "3"}, "sft")
    with pytest.raises(ParamsError, match=r"sft\.bf16: Input should be a valid boolean"):
        params_from(SFTParams, {"bf16": 1}, "sft")


def test_cli_flags_are_the_declarations():
    p = argparse.ArgumentParser()
    add_param_arguments(p, RLParams, tables={"rewards": "--reward", "curriculum": "--curriculum"})
    p.format_help()  # a "%" in a description must not break --help
    cfg = params_from_args(RLParams, p.parse_args(["--finetune", "lora", "--lora-r", "8", "--reward",
                                                   "format_weight=0.5"]))
    assert (cfg.finetune, cfg.lora_r, cfg.rewards) == ("lora", 8, {"format_weight": 0.5})
    with pytest.raises(SystemExit):
        p.parse_args(["--finetune", "qlora"])


def test_every_plan_stage_declares_its_run_keys():
    assert {s for stages in PLANS.values() for s in stages} <= set(STAGE_KEYS)


@pytest.mark.parametrize(("kind", "params"), [
    ("sft", {"max_steps": 10, "lr": 1e-3, "mix": {"easy": 1}, "mode": "parallel", "model": "/m", "window": 5}),
    ("sft", {"guardrails": True}),  # what the monitor sets
    ("rl", {"lr": 1e-5, "beta": 0.1, "rl": {"max_steps": 5}}),  # an rl run's flat params are the rl stage's
    ("full", {"lr": 1e-3, "rl": {"lr": 1e-5, "rewards": {"format_weight": 0.5}}}),
    ("sleep", {"seconds": 0.5, "fail_at_step": 2}),
    ("backtest", {"candidate": "/c", "n_per_tier": 5, "backtest_report": "/r.json"}),
    ("noop", {}),
    # the dataset's mode and the SFT gate's uplift_mode are two keys: a sequential run passes both stages
    ("sft", {"mode": "sequential", "uplift_mode": "relative", "threshold": 0.1}),
])
def test_run_params_a_stage_reads_are_accepted(kind, params):
    validate_run_params(kind, params)


@pytest.mark.parametrize(("kind", "params", "needles"), [
    ("sft", {"max_step": 10}, ["unknown param(s) max_step", "(dataset, sft, sft_gate, backtest, gate)",
                               "sft (batch_size,"]),
    # A full run's flat params are the sft stage's: an rl-only key must go under `rl`.
    ("full", {"beta": 0.1}, ["unknown param(s) beta"]),
    ("noop", {"seconds": 1}, ["unknown param(s) seconds", "Its stages take no params"]),
    ("rl", {"rl": {"learning_rate": 1e-5}}, ["param rl: unknown key(s) learning_rate"]),
    ("rl", {"rl": 5}, ["param rl: expected a table"]),
    # values are checked at trigger too, as the stage that reads the key would
    ("sft", {"max_steps": -3}, ["stage sft", "max_steps"]),
    ("sft", {"uplift_mode": "percent"}, ["stage sft_gate", "uplift_mode"]),
    ("sft", {"mode": "both"}, ["stage dataset", "mode"]),
    ("full", {"rl": {"lr": "fast"}}, ["param rl", "lr"]),
])
def test_unknown_run_params_are_refused_with_the_key_and_the_stages(kind, params, needles):
    with pytest.raises(ParamsError) as ei:
        validate_run_params(kind, params)
    for needle in needles:
        assert needle in str(ei.value)
