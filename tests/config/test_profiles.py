"""Production profiles (config/profiles/) and accelerate configs (config/accelerate/) are valid where they are read."""

from __future__ import annotations

from pathlib import Path

import pytest

from pr1d.config import load_config

ROOT = Path(__file__).resolve().parents[2]
PROFILES = sorted((ROOT / "config" / "profiles").glob("*.toml"))
ACCELERATE = ROOT / "config" / "accelerate"


def _load(profile: Path):
    # Only the file itself: no /etc/pr1d/pr1d.toml and no PR1_* variables of whoever runs the tests.
    return load_config([profile], environ={}, use_system=False)


def test_the_7b_profile_exists():
    assert ROOT / "config" / "profiles" / "qwen2.5-7b.toml" in PROFILES


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_profile_sets_typed_sft_and_rl_tables(profile):
    """The tables load as the stages' own parameter models (a typo would have stopped load_config), and what
    the stages receive (only the keys set) validates on its own."""
    from pr1d.params import RLParams, SFTParams

    training = _load(profile).training
    sft, rl = training.for_stage("sft"), training.for_stage("rl")
    assert sft, "a training profile sets [training.sft]"
    assert rl, "a training profile sets [training.rl]"
    assert SFTParams.model_validate(sft) == training.sft
    assert RLParams.model_validate(rl) == training.rl


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_profile_launches_through_a_shipped_accelerate_config(profile):
    d = _load(profile).daemon
    assert d.launcher == "accelerate"
    # Workers start in their stage folder: a relative path would resolve there.
    assert Path(d.accelerate_config).is_absolute()
    assert (ACCELERATE / Path(d.accelerate_config).name).is_file()


def test_7b_profile_is_the_production_recipe():
    cfg = _load(ROOT / "config" / "profiles" / "qwen2.5-7b.toml")
    sft, rl = cfg.training.sft, cfg.training.rl
    assert (sft.finetune, sft.bf16, sft.gradient_checkpointing) == ("lora", True, True)
    assert (rl.finetune, rl.bf16, rl.gradient_checkpointing) == ("lora", True, True)
    assert cfg.daemon.accelerate_config.endswith("1node-8gpu-ddp.yaml")


# -- accelerate configs, read by accelerate 1.15's own loader and launcher ---------------------------------------

def _launch_args(config: Path, *extra: str):
    """What `accelerate launch --config_file CONFIG ... -m pr1d.stages.sft spec.json` would start, without
    starting it: the parsed and defaulted args, the torchrun arguments and the ranks' environment."""
    pytest.importorskip("accelerate")
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(
        ["--config_file", str(config), *extra, "-m", "pr1d.stages.sft", "spec.json"])
    args, _defaults, _mp = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    return args, env


def test_every_accelerate_config_loads_with_accelerates_loader():
    pytest.importorskip("accelerate")
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    files = sorted(p.name for p in ACCELERATE.glob("*.yaml"))
    assert files == ["1node-8gpu-ddp.yaml", "1node-8gpu-fsdp.yaml", "1node-8gpu-zero2.yaml", "cpu-2proc.yaml",
                     "multinode-2x8gpu.yaml"]
    for name in files:
        assert isinstance(load_config_from_file(str(ACCELERATE / name)), ClusterConfig), name


def test_fsdp_config_keys_are_launcher_flags():
    """accelerate copies fsdp_config keys onto its args without checking them: a typo would be ignored."""
    pytest.importorskip("accelerate")
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    dests = {a.dest for a in launch_command_parser()._actions}
    keys = set(load_config_from_file(str(ACCELERATE / "1node-8gpu-fsdp.yaml")).fsdp_config)
    assert keys <= dests, sorted(keys - dests)


def test_cpu_2proc_starts_two_ranks_through_torchrun():
    args, env = _launch_args(ACCELERATE / "cpu-2proc.yaml")
    # multi_gpu selects torchrun (2 ranks); MULTI_CPU would select the one-process simple launcher.
    assert args.multi_gpu and not args.cpu
    assert args.nproc_per_node == "2"
    assert args.main_process_port > 0  # 0 in the file: a free port picked per launch
    assert env["ACCELERATE_MIXED_PRECISION"] == "no"


def test_ddp_config_starts_eight_bf16_ranks():
    args, env = _launch_args(ACCELERATE / "1node-8gpu-ddp.yaml")
    assert args.multi_gpu and args.nproc_per_node == "8"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert "ACCELERATE_USE_FSDP" not in env


def test_zero2_config_launches_eight_deepspeed_ranks_on_the_shipped_json():
    """ZeRO-2 for a full-fine-tuning RL stage: accelerate's launcher reads it as DeepSpeed over 8 ranks, and the
    DeepSpeed file leaves every batch/precision number to the Trainer ("auto"), so [training.rl] sets them."""
    import json

    args, _defaults, _mp = _validate(ACCELERATE / "1node-8gpu-zero2.yaml")
    assert args.use_deepspeed and args.num_processes == 8
    assert Path(args.deepspeed_config_file).name == "zero2.json" and Path(args.deepspeed_config_file).is_absolute()
    ds = json.loads((ACCELERATE / "zero2.json").read_text())
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"] == "auto"
    for key in ("gradient_accumulation_steps", "gradient_clipping", "train_batch_size",
                "train_micro_batch_size_per_gpu"):
        assert ds[key] == "auto", key


def _validate(config: Path):
    pytest.importorskip("accelerate")
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(config), "-m", "pr1d.stages.rl", "spec.json"])
    return _validate_launch_command(args)


def test_fsdp_config_wraps_each_qwen2_decoder_layer_in_bf16():
    pytest.importorskip("transformers")
    from transformers import Qwen2ForCausalLM
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

    args, env = _launch_args(ACCELERATE / "1node-8gpu-fsdp.yaml")
    assert args.use_fsdp and args.nproc_per_node == "8"
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    # The class name accelerate looks up in the model is the real decoder block of Qwen2.5.
    assert env["FSDP_TRANSFORMER_CLS_TO_WRAP"] == Qwen2DecoderLayer.__name__
    assert Qwen2DecoderLayer.__name__ in Qwen2ForCausalLM._no_split_modules
    assert env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"


def test_multinode_config_joins_machine_0_from_machine_1():
    """The second host runs the daemon host's file with --machine_rank 1 (docs/multi_gpu.md)."""
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(ACCELERATE / "multinode-2x8gpu.yaml"))
    args, _env = _launch_args(ACCELERATE / "multinode-2x8gpu.yaml", "--machine_rank", "1")
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("2", "8", 1)
    assert args.rdzv_backend == "static"
    assert args.rdzv_endpoint == f"{cfg.main_process_ip}:{cfg.main_process_port}"
    assert cfg.machine_rank == 0 and cfg.main_process_port != 0
