"""Strict, layered configuration: built-in defaults < /etc/pr1d/pr1d.toml < --config < PR1_* env.

Every field is documented where it is declared (``Field(description=...)``); `docs/configuration.md`
is generated from these declarations (`python -m pr1d.config --markdown`) and a test keeps it current.
An unknown key, a wrong type or an out-of-range value stops start-up with the file, the key path and
what was expected -- never silently ignored.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .evaluate.gate import GateConfig
from .kb.config import KBConfig
from .monitor.rules import RuleConfig, effective_rule_config
from .monitor.signals import SignalConfig, effective_signal_config
from .params import BacktestParams, RewardParams, RLParams, SFTGateParams, SFTParams
from .registry.config import ApprovalConfig, RegistryConfig, WatchConfig
from .scoreboard import ScoreboardConfig
from .tasks.config import TasksConfig

SYSTEM_CONFIG = Path("/etc/pr1d/pr1d.toml")
ENV_PREFIX = "PR1_"
# PR1_* variables that are not config keys (clients and the CLI read them directly).
RESERVED_ENV = {"PR1_SOCKET", "PR1_CONFIG", "PR1_STATE_DIR", "PR1_EVENT_FD", "PR1_NO_SYSTEM_CONFIG"}


class _Section(BaseModel):
    # strict: TOML already gives typed values, so "5" for an integer is a mistake worth reporting.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SlurmConfig(_Section):
    """Stage workers as Slurm batch jobs, for `launcher = "slurm"` (docs/multi_gpu.md, "Several machines
    through Slurm"). The daemon submits each stage with `sbatch`, follows its events through a file in the
    run folder and cancels it with `scancel`; the job outlives a daemon restart and is re-attached."""

    shared_run_folder: bool = Field(
        False,
        description="Say that `<state_dir>/runs` is on a filesystem every Slurm node mounts at the same path "
        "(the job reads its spec and writes its events, log and checkpoints there). Required with "
        "`launcher = \"slurm\"`: the daemon cannot check it from its own host.",
    )
    partition: str = Field("", description="`sbatch --partition`. Empty: the cluster's default partition.")
    nodes: int = Field(1, ge=1, le=1024, description="`sbatch --nodes`: machines per stage job.")
    gpus_per_node: int = Field(
        0, ge=0, le=64,
        description="`sbatch --gpus-per-node`, and the processes per node: above 1 GPU (or above 1 node) the "
        "job runs `accelerate launch` on every node (`accelerate_config` applies), else plain python.",
    )
    cpus_per_task: int = Field(0, ge=0, le=4096, description="`sbatch --cpus-per-task`; 0 = the cluster's default.")
    time_limit: str = Field(
        "", description="`sbatch --time` (e.g. `2-00:00:00`, `90`); empty = the partition's limit.",
    )
    main_process_port: int = Field(
        29500, ge=1024, le=65535, description="Rendezvous port on the job's first node when it spans several nodes."
    )
    extra_args: list[str] = Field(
        [], description="More `sbatch` options, one `--name=value` each (e.g. `[\"--account=ml\", \"--qos=high\"]`).",
    )
    poll_s: float = Field(
        2.0, gt=0, le=60, description="How often the daemon asks Slurm (`scontrol show job`) for the job's state.",
    )

    @field_validator("time_limit")
    @classmethod
    def _time_limit(cls, v: str) -> str:
        # Slurm's forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S (and "UNLIMITED").
        if v and v != "UNLIMITED" and not re.fullmatch(r"(\d+-)?\d+(:\d+){0,2}", v):
            raise ValueError(f"expected a Slurm time such as 90, 12:00:00 or 2-00:00:00, got {v!r}")
        return v

    @field_validator("extra_args")
    @classmethod
    def _extra_args(cls, v: list[str]) -> list[str]:
        for a in v:
            if not a.startswith("-") or any(c.isspace() for c in a.split("=", 1)[0]):
                raise ValueError(f"expected sbatch options such as --account=ml, got {a!r}")
        return v


class DaemonConfig(_Section):
    """The daemon process: where it keeps state, how it runs stage workers."""

    state_dir: str = Field(
        "~/.local/state/pr1d",
        description="Directory holding the ledger, scheduler job store, run folders and the lock. "
        "`pr1d serve --state-dir` overrides it; under systemd it is /var/lib/pr1d.",
    )
    socket_path: str = Field(
        "",
        description="Unix socket path. Empty: $RUNTIME_DIRECTORY/pr1d.sock under systemd, "
        "else <state_dir>/pr1d.sock.",
    )
    max_training_stages: int = Field(
        1, ge=1, le=64, description="How many stage workers may run at once (one per GPU set is typical)."
    )
    heartbeat_timeout_s: float = Field(
        120.0,
        gt=0,
        description="A stage worker that sends no event for this long is killed and its stage failed.",
    )
    stop_grace_s: float = Field(
        20.0,
        gt=0,
        description="After SIGTERM (cancel or daemon stop) a worker gets this long to checkpoint before SIGKILL. "
        "Keep it below the unit's TimeoutStopSec.",
    )
    worker_python: str = Field(
        "", description="Interpreter for stage workers. Empty: the daemon's own interpreter."
    )
    launcher: Literal["python", "accelerate", "slurm"] = Field(
        "python",
        description="`python` runs `python -m pr1d.stages.X`; `accelerate` runs `accelerate launch` "
        "with `accelerate_config` for several GPUs or nodes; `slurm` submits each stage as a Slurm job "
        "(`[daemon.slurm]`).",
    )
    accelerate_config: str = Field("", description="Path of the accelerate config file for `launcher = \"accelerate\"`.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Daemon log level.")
    worker_memory_limit_mb: int = Field(
        0, ge=0, description="Address-space limit per stage worker (RLIMIT_AS), so a runaway stage fails with "
        "'out of memory' instead of the kernel OOM killer picking a victim. 0 = no limit (GPU drivers map "
        "large address ranges: leave it 0 on GPU hosts).",
    )
    worker_file_limit_mb: int = Field(
        0, ge=0, description="Largest file a stage worker may write (RLIMIT_FSIZE); 0 = no limit.",
    )
    slurm: SlurmConfig = SlurmConfig()

    @model_validator(mode="after")
    def _slurm_needs_shared_runs(self) -> DaemonConfig:
        if self.launcher == "slurm" and not self.slurm.shared_run_folder:
            raise ValueError(
                "launcher = \"slurm\" needs <state_dir>/runs on a filesystem every node mounts at the same path; "
                "once it is, say so with daemon.slurm.shared_run_folder = true"
            )
        return self


class AuthConfig(_Section):
    """Who may use the socket (checked with SO_PEERCRED). Everyone else is refused."""

    operator_users: list[str] = Field(
        ["root"],
        description="Unix users allowed to operate (trigger, cancel, approve, reject, rollback, hold). "
        "The daemon's own user is always an operator.",
    )
    operator_groups: list[str] = Field(["pr1-oncall"], description="Unix groups whose members may operate.")
    reader_users: list[str] = Field([], description="Unix users allowed to read (status, runs, logs).")
    reader_groups: list[str] = Field(["pr1-viewers"], description="Unix groups whose members may read.")


class RpcConfig(_Section):
    """Socket API limits that keep one bad client from hurting the daemon or other clients."""

    max_line_bytes: int = Field(
        1 << 20, ge=1024, le=64 << 20, description="Longest accepted request line; longer closes the connection."
    )
    max_clients: int = Field(256, ge=1, description="Concurrent socket connections; more are refused.")
    client_queue: int = Field(
        2000,
        ge=10,
        description="Pushed events buffered per subscriber. A client that falls this far behind "
        "(it stopped reading) is disconnected so it cannot hold daemon memory.",
    )
    write_timeout_s: float = Field(5.0, gt=0, description="A reply that cannot be written in this time drops the client.")


class SchedulerConfig(_Section):
    """APScheduler (persistent job store in the state dir)."""

    poll_interval_s: float = Field(60.0, gt=0, description="How often the scoring API is polled.")
    misfire_grace_s: int = Field(
        3600,
        ge=1,
        description="A periodic job missed while the daemon was down still runs if it is at most this late "
        "(APScheduler's default of 1 s would silently drop it). Missed runs are coalesced into one.",
    )


class ScoringConfig(_Section):
    """The agent platform's scoring API. The token is read from the environment or a file, never stored."""

    base_url: str = Field("http://127.0.0.1:8765", description="Base URL of the scoring API (the agent platform).")
    token_env: str = Field(
        "PR1_SCORING_TOKEN", description="Environment variable holding the bearer token (never stored in the ledger)."
    )
    token_file: str = Field(
        "", description="File holding the bearer token; used when the variable in `token_env` is unset."
    )
    timeout_s: float = Field(10.0, gt=0, le=300, description="Per-request timeout.")
    concurrency: int = Field(32, ge=1, le=1024, description="Agents polled at once (HTTP requests in flight).")
    page_limit: int = Field(500, ge=1, le=1000, description="Evaluations asked for per page.")
    max_pages_per_cycle: int = Field(
        20, ge=1, description="Pages read per agent per cycle; the rest waits for the next cycle (bounds a cycle)."
    )
    max_attempts: int = Field(4, ge=1, le=20, description="Tries per request on timeouts, 5xx and resets.")
    backoff_base_s: float = Field(0.2, gt=0, description="First retry delay; doubles per try, with full jitter.")
    backoff_max_s: float = Field(10.0, gt=0, description="Longest retry delay (a Retry-After header is honoured up to this).")
    field_map: dict[str, str] = Field(
        {},
        description="Contract field -> the platform's field name, for platforms whose names differ "
        "(e.g. {weighted_score = \"score\", id = \"evaluation_id\"}). See docs/scoring-api.md.",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")


class RetentionConfig(_Section):
    """What `pr1ctl ledger compact` (and the daily retention job) removes. Runs, stages, triggers,
    deployments and the audit log are never removed."""

    samples_days: float = Field(
        30.0, gt=0, description="Score samples older than this are removed, except each agent's newest `keep_per_agent`."
    )
    keep_per_agent: int = Field(
        500, ge=50, description="Newest samples always kept per agent (the signals need their windows)."
    )
    metrics_days: float = Field(
        90.0, gt=0, description="Metric time series of runs that ended longer ago than this are removed."
    )
    vacuum: bool = Field(False, description="VACUUM after compacting (returns disk space; locks the ledger while it runs).")


class DatasetConfig(_Section):
    """The dataset builder's gradebook copy and defaults (docs/parallel_r1_playbook.md)."""

    gradebook_sync_cron: str = Field(
        "17 2 * * *", description="When the daemon syncs its local gradebook copy (crontab fields: minute hour "
        "day month weekday). Empty: no scheduled sync (runs still pull on demand)."
    )
    min_score: float = Field(0.9, ge=0.0, le=1.0, description="Gradebook entries at or above this score seed datasets.")
    guardrails_dir: str = Field(
        "", description="Directory of guardrail exemplar files (*.toml) for targeted SFT and compliance runs. "
        "Empty: the checkout's config/guardrails/; a wheel install copies that directory (e.g. to "
        "/etc/pr1d/guardrails) and names it here. See docs/dataset.md."
    )
    guardrail_share: float = Field(
        0.25, ge=0.0, le=0.9, description="Share of a targeted (or compliance-flagged) dataset that is guardrail "
        "exemplars, repeated when the set is smaller; the rest are the agent's tasks."
    )
    teacher_url: str = Field(
        "", description="OpenAI-compatible endpoint of a teacher model that writes the Parallel traces. "
        "Empty: GSM-lite's deterministic strategies. Its API key comes from the PR1_TEACHER_API_KEY variable."
    )
    teacher_model: str = Field("", description="Model name sent to `teacher_url` (required when it is set).")
    self_sample_url: str = Field(
        "", description="OpenAI-compatible /v1/completions endpoint serving the agent's own model: where no teacher "
        "is set, task families other than gsm_lite get Parallel traces by rejection sampling from it (the accepted "
        "samples become the paths). API key: PR1_SAMPLER_API_KEY. See docs/dataset.md."
    )
    self_sample_model: str = Field("", description="Model name sent to `self_sample_url` (required when it is set).")
    self_samples: int = Field(8, ge=2, le=64, description="Samples per task when self-sampling (two accepted, "
                              "distinct samples make a trace).")

    @field_validator("gradebook_sync_cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        if v and len(v.split()) != 5:
            raise ValueError("expected 5 crontab fields (minute hour day month weekday), or empty")
        return v


class MonitorConfig(_Section):
    """Score monitoring: the signals and trigger rules (docs/entry-criteria.md)."""

    enabled: bool = Field(True, description="Poll the scoring API and queue runs when signals fire.")
    signals: SignalConfig = SignalConfig()
    rules: RuleConfig = RuleConfig()
    profiles: dict[str, dict[str, Any]] = Field(
        {},
        description="Per agent profile overrides of [monitor.signals] and [monitor.rules] keys, e.g. "
        "profiles.premium = {target = 0.9, cooldown_s = 600.0}.",
    )

    @field_validator("profiles")
    @classmethod
    def _profiles_valid(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, over in v.items():
            split_profile_override(name, over)  # raises with the profile and key named
        return v

    def for_profile(self, profile: str) -> tuple[SignalConfig, RuleConfig]:
        over = self.profiles.get(profile)
        if not over:
            return self.signals, self.rules
        sig, rule = split_profile_override(profile, over)
        return effective_signal_config(self.signals, sig), effective_rule_config(self.rules, rule)


def split_profile_override(name: str, over: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    sig = {k: v for k, v in over.items() if k in SignalConfig.model_fields}
    rule = {k: v for k, v in over.items() if k in RuleConfig.model_fields}
    unknown = set(over) - set(sig) - set(rule)
    if unknown:
        raise ValueError(f"profile {name!r}: unknown key(s) {sorted(unknown)}")
    try:
        effective_signal_config(SignalConfig(), sig)
        effective_rule_config(RuleConfig(), rule)
    except ValidationError as e:
        er = e.errors()[0]
        loc = ".".join(str(x) for x in er["loc"])
        raise ValueError(f"profile {name!r}: key `{loc}`: {er['msg']} (got {er.get('input')!r})") from None
    except TypeError as e:
        raise ValueError(f"profile {name!r}: {e}") from None
    return sig, rule


NotifyEventName = Literal["awaiting_approval", "run_failed", "gate_inconclusive", "rollback", "push_failing", "drift"]
NOTIFY_EVENTS: tuple[str, ...] = get_args(NotifyEventName)


class WebhookConfig(_Section):
    """One webhook: where events are POSTed, which events, and how hard each delivery is tried."""

    url: str = Field(
        ..., examples=["https://hooks.slack.com/services/T000/B000/XXXX"],
        description="Where events are POSTed (http:// or https://). Slack-style URLs hold a secret: the URL is "
        "never logged, `name` is.",
    )
    name: str = Field("", description="Name of the webhook in logs and status. Empty: the URL's host.")
    kind: Literal["json", "slack"] = Field(
        "json",
        description="`json`: the event as a JSON document (event, run, agent, state, reason, command, details). "
        "`slack`: a Slack-compatible {\"text\": ...} body, a one-line summary and a few detail lines.",
    )
    events: list[NotifyEventName] = Field(
        list(NOTIFY_EVENTS), description="Events sent to this webhook (default: all of them)."
    )
    token_file: str = Field(
        "", description="File holding a secret sent in `header` with every POST (read at each delivery, so a "
        "rotated secret needs no reload). Empty: no secret is sent.",
    )
    header: str = Field(
        "Authorization",
        description="Header carrying the secret from `token_file`: `Authorization` gets \"Bearer <secret>\", "
        "any other header the secret as it is (e.g. X-Api-Key).",
    )
    timeout_s: float = Field(5.0, gt=0, le=60, description="Timeout of one POST (connect, write and answer).")
    max_attempts: int = Field(
        5, ge=1, le=20, description="Tries per event on timeouts, connection errors, 429 and 5xx; other 4xx "
        "answers are not retried.",
    )
    backoff_base_s: float = Field(1.0, gt=0, description="First retry delay; doubles per try, with jitter.")
    backoff_max_s: float = Field(60.0, gt=0, description="Longest delay between two tries of one event.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v

    @field_validator("events")
    @classmethod
    def _events(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError(f"name at least one event (or remove the webhook); known: {', '.join(NOTIFY_EVENTS)}")
        if len(set(v)) != len(v):
            raise ValueError("an event is listed twice")
        return v

    @field_validator("header")
    @classmethod
    def _header(cls, v: str) -> str:
        if not v or any(not (c.isalnum() or c in "-_") for c in v):
            raise ValueError("expected an HTTP header name (letters, digits, - and _), e.g. Authorization")
        return v

    @model_validator(mode="after")
    def _backoff(self) -> WebhookConfig:
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError(f"backoff_max_s ({self.backoff_max_s}) is below backoff_base_s ({self.backoff_base_s})")
        return self


class NotifyConfig(_Section):
    """Webhooks that page people when something needs them (docs/runbooks/operations.md, "Notifications")."""

    webhooks: list[WebhookConfig] = Field(
        [],
        description="The webhooks, one `[[notify.webhooks]]` table each. Every event goes to each webhook "
        "that lists it, in the background: a slow or failing receiver never holds up the daemon.",
    )
    queue_size: int = Field(
        1000, ge=1, le=100_000,
        description="Events waiting per webhook; when full the oldest is dropped (logged, counted in status).",
    )
    drain_timeout_s: float = Field(
        5.0, ge=0, le=60, description="At shutdown, how long queued events may still be sent; the rest is dropped."
    )


class TrainingConfig(_Section):
    """Default parameters of the curriculum's stages (`[training.<stage>]`), under each run's own params.

    Each table is the stage's parameter model (pr1d/params.py; for `sft` and `rl` also the flags of
    `python -m pr1d.train.sft` / `pr1d.train.grpo`, with `_` for `-`), so a key the stage does not know stops
    the daemon at load; a run's `--param` wins over these. Only the keys a file sets reach the stage. The
    demo's values live in its config; a 7B production profile is config/profiles/.
    """

    sft: SFTParams = SFTParams()
    sft_gate: SFTGateParams = SFTGateParams()
    rl: RLParams = RLParams()
    backtest: BacktestParams = BacktestParams()

    def for_stage(self, stage: str) -> dict[str, Any]:
        """The keys the config set for ``stage`` (none for a stage without a table): what the stage layers
        the run's params over."""
        table = getattr(self, stage, None)
        return table.model_dump(mode="json", exclude_unset=True) if isinstance(table, BaseModel) else {}


class Config(_Section):
    daemon: DaemonConfig = DaemonConfig()
    auth: AuthConfig = AuthConfig()
    rpc: RpcConfig = RpcConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    scoring: ScoringConfig = ScoringConfig()
    monitor: MonitorConfig = MonitorConfig()
    gate: GateConfig = GateConfig()
    approvals: ApprovalConfig = ApprovalConfig()
    registry: RegistryConfig = RegistryConfig()
    watch: WatchConfig = WatchConfig()
    scoreboard: ScoreboardConfig = ScoreboardConfig()
    retention: RetentionConfig = RetentionConfig()
    kb: KBConfig = KBConfig()
    dataset: DatasetConfig = DatasetConfig()
    tasks: TasksConfig = TasksConfig()
    rewards: RewardParams = RewardParams()
    training: TrainingConfig = TrainingConfig()
    notify: NotifyConfig = NotifyConfig()

    # -- derived values ---------------------------------------------------------------------------
    def state_path(self) -> Path:
        return Path(os.path.expanduser(self.daemon.state_dir))

    def socket(self) -> Path:
        return default_socket_path(self)

    def scoring_token(self) -> str | None:
        """The bearer token from the environment or the secret file; None when neither is set."""
        return read_token(self.scoring.token_env, self.scoring.token_file)


def read_token(token_env: str, token_file: str) -> str | None:
    """A bearer token: the variable ``token_env`` first, then the file ``token_file``; None when neither is
    set. The one way the daemon and every stage read it (the spec carries only these two names)."""
    tok = os.environ.get(token_env) if token_env else None
    if tok:
        return tok.strip()
    if token_file:
        try:
            return Path(token_file).read_text().strip() or None
        except OSError as e:
            raise ConfigError(f"scoring.token_file {token_file}: {e.strerror}") from None
    return None


def default_socket_path(cfg: Config | None = None) -> Path:
    if cfg is not None and cfg.daemon.socket_path:
        return Path(os.path.expanduser(cfg.daemon.socket_path))
    rt = os.environ.get("RUNTIME_DIRECTORY")
    if rt:
        return Path(rt.split(":")[0]) / "pr1d.sock"
    state = cfg.state_path() if cfg is not None else Path(os.path.expanduser(DaemonConfig().state_dir))
    return state / "pr1d.sock"


class ConfigError(Exception):
    """A configuration problem, worded for the person who has to fix it (one line per problem)."""


@dataclass
class _Layer:
    source: str
    data: dict[str, Any]


def _flatten(d: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied reading config file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid UTF-8") from None


def _env_layer(environ: dict[str, str]) -> _Layer:
    """PR1_SECTION__KEY=value -> {section: {key: value}}; the value is read as a TOML literal when it is one."""
    data: dict[str, Any] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in RESERVED_ENV or "__" not in name:
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment {name}: conflicts with another PR1_ variable")
        node[parts[-1]] = value
    return _Layer("environment (PR1_*)", data)


def describe_error(err: dict[str, Any], allowed: list[str] | None = None) -> str:
    """One pydantic error, worded for the person editing a TOML file (config and sim scenarios share it)."""
    t = err["type"]
    got = err.get("input")
    if t == "extra_forbidden":
        return "unknown key" + (f" (expected one of: {', '.join(allowed)})" if allowed else "")
    if t == "missing":
        return "required key is missing"
    ctx = err.get("ctx") or {}
    expected = {
        "int_type": "an integer",
        "float_type": "a number",
        "string_type": "a string",
        "bool_type": "true or false",
        "list_type": "a list",
        "dict_type": "a table",
        "model_type": "a table",
        "datetime_type": "a TOML datetime such as 2025-01-01T00:00:00Z",
        "literal_error": f"one of {ctx.get('expected', '')}",
        "greater_than_equal": f"a value >= {ctx.get('ge')}",
        "greater_than": f"a value > {ctx.get('gt')}",
        "less_than_equal": f"a value <= {ctx.get('le')}",
        "less_than": f"a value < {ctx.get('lt')}",
    }.get(t)
    if expected:
        return f"expected {expected}, got {got!r}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{msg} (got {got!r})" if t != "value_error" else msg


def load_config(
    paths: list[Path] | None = None,
    *,
    environ: dict[str, str] | None = None,
    use_system: bool | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Build the effective config from every layer; raise ConfigError naming file and key on any problem."""
    environ = dict(os.environ if environ is None else environ)
    if use_system is None:
        use_system = not environ.get("PR1_NO_SYSTEM_CONFIG")
    layers: list[_Layer] = []
    if use_system and SYSTEM_CONFIG.exists():
        layers.append(_Layer(str(SYSTEM_CONFIG), _read_toml(SYSTEM_CONFIG)))
    for p in paths or []:
        layers.append(_Layer(str(p), _read_toml(Path(p))))
    layers.append(_env_layer(environ))
    if overrides:
        layers.append(_Layer("command line", overrides))

    merged: dict[str, Any] = {}
    origin: dict[tuple[str, ...], str] = {}
    for layer in layers:
        merged = _merge(merged, layer.data)
        for key in _flatten(layer.data):
            origin[key] = layer.source
        for key in layer.data:  # a whole section given as a non-table still needs an origin
            origin.setdefault((key,), layer.source)
    try:
        return Config.model_validate(merged)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = tuple(str(x) for x in err["loc"])
            src = next((origin[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in origin), "built-in defaults")
            lines.append(f"{src}: key `{'.'.join(loc)}`: {describe_error(err)}")
        raise ConfigError("\n".join(lines)) from None


def _type_name(ann: Any) -> str:
    from typing import get_args, get_origin

    if get_origin(ann) is Literal:
        return " | ".join(repr(a) for a in get_args(ann))
    return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")


@dataclass(frozen=True)
class _Required:
    """A key without a default, in the generated reference; ``example`` fills the sample file."""

    example: Any

    def __repr__(self) -> str:
        return "required"


def _table_list_item(ann: Any) -> type[BaseModel] | None:
    """The table type of an array-of-tables key (``list[Model]``, e.g. ``[[notify.webhooks]]``), else None."""
    from typing import get_origin

    args = get_args(ann)
    if get_origin(ann) is list and len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0]
    return None


def _walk(model: type[BaseModel], prefix: str = ""):
    """The config tree in file order: ("key", name, type, default, description) for each key of a section,
    then ("array", dotted name, description, item model) for each array of tables, then ("section", dotted
    name, its doc or "") for each subsection, followed by its own items."""
    nested, arrays = [], []
    for key, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            nested.append((key, ann))
            continue
        item = _table_list_item(ann)
        if item is not None:
            arrays.append((f"{prefix}.{key}" if prefix else key, f.description or "", item))
            continue
        if f.is_required():
            default: Any = _Required((f.examples or [""])[0])
        else:
            default = f.default if f.default_factory is None else f.default_factory()
        yield "key", key, ann, default, f.description or ""
    for name, desc, item in arrays:
        yield "array", name, desc, item
    for key, sub in nested:
        name = f"{prefix}.{key}" if prefix else key
        doc = " ".join(sub.__doc__.split()) if sub.__doc__ and sub.__doc__ != _Section.__doc__ else ""
        yield "section", name, doc
        yield from _walk(sub, name)


def _model_markdown(model: type[BaseModel], out: list[str]) -> None:
    rows: list[str] = []

    def table() -> None:
        if rows:
            out.extend(["| key | type | default | meaning |", "|---|---|---|---|", *rows, ""])
            rows.clear()

    for item in _walk(model):
        if item[0] == "key":
            _, key, ann, default, desc = item
            rows.append(f"| `{key}` | `{_type_name(ann)}` | `{default!r}` | {desc} |")
        elif item[0] == "array":
            table()
            _, name, desc, sub = item
            out.extend([f"## `[[{name}]]`", "", desc, ""])
            _model_markdown(sub, out)
        else:
            table()
            out.extend([f"## `[{item[1]}]`", ""] + ([item[2], ""] if item[2] else []))
    table()


def config_markdown() -> str:
    """Render every config key with its type, default and description (docs/configuration.md)."""
    out = [
        "# Configuration reference",
        "",
        "Generated from `pr1d/config.py` by `python -m pr1d.config --markdown`; do not edit by hand.",
        "",
        "Layers, lowest to highest: built-in defaults, `/etc/pr1d/pr1d.toml`, `--config PATH`, then",
        "environment variables `PR1_<SECTION>__<KEY>` (for example `PR1_DAEMON__MAX_TRAINING_STAGES=2`;",
        "the value is read as a TOML literal). Unknown keys, wrong types and out-of-range values stop",
        "start-up with the file and key. `SIGHUP` reloads; an invalid new config is refused and the old one stays.",
        "",
    ]
    _model_markdown(Config, out)
    return "\n".join(line for line in out) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot render {v!r} as TOML")


def _wrap_comment(text: str, width: int = 100) -> list[str]:
    import textwrap

    return ["# " + line for line in textwrap.wrap(text, width - 2)] or ["#"]


def _model_toml(model: type[BaseModel], out: list[str]) -> None:
    # The [training.<stage>] tables are commented out: only the keys a file sets reach the stage (under the
    # run's params), so a copy of this file must not pin every default. A key without a value (None) has
    # no TOML form: it is shown commented out as well.
    commented = False
    for item in _walk(model):
        if item[0] == "key":
            _, key, _ann, default, desc = item
            if commented or default is None:
                shown = "..." if default is None else _toml_value(default)
                out.extend([*_wrap_comment(desc), f"# {key} = {shown}", ""])
                continue
            out.extend([*_wrap_comment(desc), f"{key} = {_toml_value(default)}", ""])
        elif item[0] == "array":
            # Commented out: the default is an empty array, and an example entry must not become a real one.
            _, name, desc, sub = item
            out.extend([*_wrap_comment(desc + " Example (uncomment and edit):"), f"# [[{name}]]"])
            for _, key, _ann, default, kdesc in _walk(sub):
                value = default.example if isinstance(default, _Required) else default
                out.extend([*("# " + c for c in _wrap_comment(kdesc, 98)), f"# {key} = {_toml_value(value)}"])
            out.append("")
        else:
            commented = item[1].startswith("training.")
            out.extend([f"[{item[1]}]", *(_wrap_comment(item[2]) if item[2] else []), ""])


def config_toml() -> str:
    """The documented default config file (config/pr1d.toml): every key, its default, what it means."""
    out = [
        "# pr1d configuration: the built-in defaults, every key documented.",
        "# Generated by `python -m pr1d.config --toml` from pr1d/config.py; a test keeps it current.",
        "# Copy the keys you change to /etc/pr1d/pr1d.toml (or a file passed with --config); unknown keys are",
        "# refused at start-up. Environment: PR1_<SECTION>__<KEY>=value overrides any key.",
        "",
    ]
    _model_toml(Config, out)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    import sys

    usage = "usage: python -m pr1d.config --markdown | --toml  (docs/configuration.md, config/pr1d.toml)"
    if sys.argv[1:] == ["--markdown"]:
        sys.stdout.write(config_markdown())
    elif sys.argv[1:] == ["--toml"]:
        sys.stdout.write(config_toml())
    elif sys.argv[1:] in (["--help"], ["-h"]):
        print(usage)
    else:
        print(usage, file=sys.stderr)
        sys.exit(2)
