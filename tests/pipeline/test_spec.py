"""The stage contract: the spec the daemon writes is the spec the worker reads, strictly, section by section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pr1d.config import Config, ConfigError, load_config
from pr1d.pipeline.spec import Scoring, SpecError, StageSpec, build_stage_spec

RUN = {"id": 4, "agent_id": "agent-007", "kind": "full", "params": {"max_steps": 9, "rl": {"lr": 1e-5}}}
STAGE = {"id": 11, "seq": 4, "name": "rl"}


def _build(cfg: Config, tmp_path: Path, **kw) -> StageSpec:
    args = dict(run=RUN, stage=STAGE, state_dir=tmp_path / "state", models_root=tmp_path / "state" / "models",
                model_in_service=str(tmp_path / "base"), heartbeat_s=3.0)
    return build_stage_spec(cfg, **{**args, **kw})


def test_built_from_the_config_by_section(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[scoring]\nbase_url = "https://platform.example"\ntoken_file = "/run/secrets/t"\ntimeout_s = 3.5\n'
                    'field_map = {weighted_score = "score"}\n[daemon]\nworker_memory_limit_mb = 4096\n'
                    '[training.rl]\nmax_steps = 40\n[rewards]\nformat_weight = 0.3\n[dataset]\nmin_score = 0.8\n')
    cfg = load_config([toml], environ={}, use_system=False)
    spec = _build(cfg, tmp_path, resume=True)
    assert (spec.run_id, spec.stage_id, spec.stage, spec.agent_id, spec.run_kind) == (4, 11, "rl", "agent-007", "full")
    assert spec.stage_dir == tmp_path / "state" / "runs" / "4" / "04-rl"
    assert spec.checkpoint_dir == spec.stage_dir / "checkpoints" and spec.resume is True
    assert spec.params == RUN["params"]
    assert (spec.limits.memory_mb, spec.limits.file_mb) == (4096, 0)
    assert spec.scoring == Scoring(url="https://platform.example", token_env="PR1_SCORING_TOKEN",
                                   token_file="/run/secrets/t", timeout_s=3.5, field_map={"weighted_score": "score"},
                                   compliance_keys=list(cfg.monitor.signals.compliance_keys))
    assert spec.registry.model_in_service == str(tmp_path / "base")
    assert spec.registry.models_root == str(tmp_path / "state" / "models")
    # Only the keys the config set for this stage travel: the stage layers the run's params over them.
    assert spec.training == {"max_steps": 40}
    assert spec.rewards.format_weight == 0.3 and spec.dataset.min_score == 0.8 and spec.gate == cfg.gate


def test_json_round_trip_and_no_secret_in_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("PR1_SCORING_TOKEN", "s3cret-token")
    spec = _build(Config(), tmp_path)
    path = spec.dump(tmp_path / "spec.json")
    assert StageSpec.load(path) == spec
    assert json.loads(path.read_text()) == spec.to_json()
    assert "s3cret-token" not in path.read_text()
    assert StageSpec.load(path).scoring.token() == "s3cret-token"


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda d: d.update(scoring_url="http://x"), "field `scoring_url`: unknown key"),
    (lambda d: d["scoring"].update(url_="http://x"), "field `scoring.url_`: unknown key"),
    (lambda d: d.update(heartbeat_s="soon"), "field `heartbeat_s`:"),
    (lambda d: d.pop("stage_dir"), "field `stage_dir`: required key is missing"),
    (lambda d: d["rewards"].update(grade_wieght=1.0), "field `rewards.grade_wieght`: unknown key"),
])
def test_load_names_the_bad_field(tmp_path, edit, needle):
    data = _build(Config(), tmp_path).to_json()
    edit(data)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SpecError) as ei:
        StageSpec.load(path)
    assert str(ei.value).startswith(f"stage spec {path}: ") and needle in str(ei.value)


@pytest.mark.parametrize(("env", "file_text", "want"), [
    ("from-env", "from-file\n", "from-env"),  # the variable first...
    (None, "from-file\n", "from-file"),  # ...then the file...
    (None, None, None),  # ...else none
])
def test_token_is_read_one_way(tmp_path, monkeypatch, env, file_text, want):
    monkeypatch.delenv("PR1_TEST_SPEC_TOKEN", raising=False)
    if env is not None:
        monkeypatch.setenv("PR1_TEST_SPEC_TOKEN", env)
    token_file = tmp_path / "token"
    if file_text is not None:
        token_file.write_text(file_text)
    scoring = Scoring(url="http://x", token_env="PR1_TEST_SPEC_TOKEN", token_file=str(token_file) if file_text else "")
    assert scoring.token() == want
    # The daemon reads it the same way.
    cfg = Config(scoring={"token_env": scoring.token_env, "token_file": scoring.token_file})
    assert cfg.scoring_token() == want


def test_unreadable_token_file_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("PR1_TEST_SPEC_TOKEN", raising=False)
    with pytest.raises(ConfigError, match=r"scoring.token_file .*/missing: No such file"):
        Scoring(token_env="PR1_TEST_SPEC_TOKEN", token_file=str(tmp_path / "missing")).token()
