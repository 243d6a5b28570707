"""Config: layering, strictness, secrets, and the generated default file and reference staying current."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pr1d.config import Config, ConfigError, config_markdown, config_toml, load_config

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parents[1] / "fixtures" / "config"


def test_builtin_defaults_load_without_files():
    cfg = load_config([], environ={}, use_system=False)
    assert cfg == Config()


def test_layers_file_then_env_then_overrides(tmp_path):
    f = tmp_path / "a.toml"
    f.write_text("[daemon]\nmax_training_stages = 2\nstop_grace_s = 5.0\n")
    cfg = load_config([f], environ={}, use_system=False)
    assert cfg.daemon.max_training_stages == 2
    cfg = load_config([f], environ={"PR1_DAEMON__MAX_TRAINING_STAGES": "3"}, use_system=False)
    assert cfg.daemon.max_training_stages == 3 and cfg.daemon.stop_grace_s == 5.0
    cfg = load_config([f], environ={"PR1_DAEMON__MAX_TRAINING_STAGES": "3"}, use_system=False,
                      overrides={"daemon": {"max_training_stages": 4}})
    assert cfg.daemon.max_training_stages == 4


def test_env_string_values_and_reserved_names_ignored():
    cfg = load_config([], environ={"PR1_SCORING__BASE_URL": "http://127.0.0.1:9/", "PR1_SOCKET": "/x"},
                      use_system=False)
    assert cfg.scoring.base_url == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("fixture", "needle"),
    [
        ("unknown_key", "key `daemon.max_training_stagez`: unknown key"),
        ("wrong_type", "key `daemon.heartbeat_timeout_s`: expected a number, got 'fast'"),
        ("out_of_range", "key `daemon.max_training_stages`: expected a value >= 1, got 0"),
        ("not_toml", "not valid TOML"),
        # The stages' parameters are typed (pr1d/params.py): a typo stops the daemon at load, with the key.
        ("unknown_training_key", "key `training.sft.max_step`: unknown key"),
        ("unknown_rl_reward_key", "key `training.rl`: rewards: unknown key(s) ['grade']"),
        ("unknown_rewards_key", "key `rewards.format_wieght`: unknown key"),
    ],
)
def test_bad_config_names_file_and_key(fixture, needle):
    path = DATA / f"{fixture}.toml"
    with pytest.raises(ConfigError) as ei:
        load_config([path], environ={}, use_system=False)
    msg = str(ei.value)
    assert msg.startswith(str(path)), msg
    assert needle in msg


def test_bad_env_names_the_environment():
    with pytest.raises(ConfigError, match=r"environment \(PR1_\*\): key `daemon.bogus`: unknown key"):
        load_config([], environ={"PR1_DAEMON__BOGUS": "1"}, use_system=False)


def test_missing_config_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config([tmp_path / "nope.toml"], environ={}, use_system=False)


def test_token_from_env_then_file_never_in_config_dump(tmp_path):
    secret = tmp_path / "token"
    secret.write_text("s3cret-file\n")
    f = tmp_path / "c.toml"
    f.write_text(f'[scoring]\ntoken_env = "MY_TOKEN"\ntoken_file = "{secret}"\n')
    cfg = load_config([f], environ={}, use_system=False)
    assert cfg.scoring_token() == "s3cret-file"
    assert "s3cret" not in cfg.model_dump_json()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MY_TOKEN", "s3cret-env")
        assert cfg.scoring_token() == "s3cret-env"


def test_default_file_is_current_and_equals_builtins():
    on_disk = (REPO / "config" / "pr1d.toml").read_text()
    assert on_disk == config_toml(), "regenerate: python -m pr1d.config --toml > config/pr1d.toml"
    assert Config.model_validate(tomllib.loads(on_disk)) == Config()
    # every key has a comment right above it
    lines = on_disk.splitlines()
    for i, line in enumerate(lines):
        if " = " in line and not line.startswith("#"):
            assert lines[i - 1].startswith("#"), f"undocumented key: {line}"


def test_configuration_reference_is_current():
    on_disk = (REPO / "docs" / "configuration.md").read_text()
    assert on_disk == config_markdown(), "regenerate: python -m pr1d.config --markdown > docs/configuration.md"


def test_module_cli_usage_error():
    cp = subprocess.run([sys.executable, "-m", "pr1d.config", "--nope"], capture_output=True, text=True)
    assert cp.returncode == 2


def test_training_tables_reach_the_stage_with_only_the_keys_set(tmp_path):
    """[training.<stage>] is layered under the run's params: only the keys a file sets travel, typed."""
    path = tmp_path / "c.toml"
    path.write_text('[training.sft]\nmax_steps = 7\nmix = "easy=1"\n[training.rl]\nrewards = {format_weight = 0.5}\n')
    cfg = load_config([path], environ={}, use_system=False)
    assert cfg.training.for_stage("sft") == {"max_steps": 7, "mix": {"easy": 1.0}}
    assert cfg.training.for_stage("rl") == {"rewards": {"format_weight": 0.5}}
    assert cfg.training.for_stage("backtest") == {} and cfg.training.for_stage("gate") == {}
