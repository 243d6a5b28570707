"""``[tasks]``: the task families the agents serve, beyond the built-in GSM-lite, and their graders.

    [tasks]
    default_family = "gsm_lite"          # entries without a `family` field belong to this one

    [tasks.families.store_facts]
    grader = { kind = "exact" }          # the graded entry's final answer is the reference

    [tasks.families.support_reply]
    grader = { kind = "critic" }         # the platform's critic decides; no reference
    reference_from_entry = false

    [tasks.profiles.helpdesk]            # agents of the platform profile "helpdesk"
    families = ["support_reply"]         # serve only these (entries of others are reported, not used)
    default_family = "support_reply"
    teacher_url = "http://teacher:8000"  # and get their traces from this teacher
    teacher_model = "qwen2.5-72b-instruct"

See docs/dataset.md ("Adding a task family").
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .families import GSM_LITE, Configured, Families, FamilySpec

__all__ = ["TasksConfig", "TasksProfile"]

_TRACE_KEYS = ("teacher_url", "teacher_model", "self_sample_url", "self_sample_model")


class TasksProfile(BaseModel):
    """What the agents of one platform profile serve, and where their traces come from (over [tasks], [dataset])."""

    model_config = ConfigDict(extra="forbid")

    families: list[str] | None = Field(
        None, description="The task families these agents serve (gsm_lite and names under [tasks.families]); "
        "entries of other families are reported as ungraded. Unset: every configured family.",
    )
    default_family: str | None = Field(None, description="Family of their entries without a `family` field.")
    teacher_url: str | None = Field(None, description="[dataset] teacher_url for these agents.")
    teacher_model: str | None = Field(None, description="[dataset] teacher_model for these agents.")
    self_sample_url: str | None = Field(None, description="[dataset] self_sample_url for these agents.")
    self_sample_model: str | None = Field(None, description="[dataset] self_sample_model for these agents.")

    def dataset_overrides(self) -> dict[str, str]:
        """The [dataset] keys this profile sets."""
        return {k: getattr(self, k) for k in _TRACE_KEYS if getattr(self, k) is not None}


class TasksConfig(BaseModel):
    """The task families pr1 builds datasets, rewards and backtests for (GSM-lite is always one of them)."""

    model_config = ConfigDict(extra="forbid")

    default_family: str = Field(
        GSM_LITE, description="The family of gradebook entries that carry no `family` field (gsm_lite or a name under "
        "[tasks.families]).",
    )
    families: dict[str, FamilySpec] = Field(
        {}, description="Task families besides gsm_lite, by the name the platform puts in entries' `family` field: "
        "`grader` (exact | numeric | critic | rubric), `reference_from_entry`, `tiers`. See docs/dataset.md.",
    )
    gsm_lite_kb_context: bool = Field(
        True, description="GSM-lite prompts get retrieved KB context in datasets (when [kb] is configured). False "
        "keeps them as the GSM-lite benchmark asks them; configured families have their own `kb_context`.",
    )
    serves: list[str] | None = Field(
        None, description="The families the agents serve (gsm_lite and names under [tasks.families]); entries of "
        "others are reported as ungraded. Unset: all of them. Per profile: profiles.<name>.families.",
    )
    profiles: dict[str, TasksProfile] = Field(
        {}, description="Per agent profile (the platform's profile name): `families` served, `default_family`, "
        "and the trace source (`teacher_url`, `teacher_model`, `self_sample_url`, `self_sample_model`).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> TasksConfig:
        for name, spec in self.families.items():
            if name == GSM_LITE:
                raise ValueError(f"[tasks.families.{GSM_LITE}] is built in; configure other families")
            Configured(name, spec, critic=object())  # names, grader and reference rules, checked at load
        if self.default_family != GSM_LITE and self.default_family not in self.families:
            raise ValueError(f"default_family {self.default_family!r} is not gsm_lite or a configured family "
                             f"(have: {sorted(self.families)})")
        known = {GSM_LITE, *self.families}
        if self.serves is not None:
            if unknown := set(self.serves) - known:
                raise ValueError(f"serves: {sorted(unknown)} not gsm_lite or a configured family (have: {sorted(known)})")
            if self.default_family not in self.serves:
                raise ValueError(f"default_family {self.default_family!r} is not one of serves {self.serves}")
        for name, prof in self.profiles.items():
            served = set(prof.families) if prof.families is not None else known
            if unknown := served - known:
                raise ValueError(f"profiles.{name}.families: {sorted(unknown)} not gsm_lite or a configured family "
                                 f"(have: {sorted(known)})")
            default = prof.default_family or self.default_family
            if default not in served:
                raise ValueError(f"profiles.{name}: default family {default!r} is not one it serves ({sorted(served)})")
            if bool(prof.teacher_url) and prof.teacher_model == "":
                raise ValueError(f"profiles.{name}: teacher_url is set but teacher_model is empty")
        return self

    def for_profile(self, profile: str | None) -> TasksConfig:
        """The families the agents of ``profile`` serve (all of them for a profile not listed)."""
        prof = self.profiles.get(profile or "")
        if prof is None:
            return self.model_copy(update={"profiles": {}})
        served = set(prof.families) if prof.families is not None else None
        fams = {n: f for n, f in self.families.items() if served is None or n in served}
        default = prof.default_family or self.default_family
        # gsm_lite not served: its entries are reported like any unserved family (Families always holds it, so
        # the default must be a served family: checked at load).
        return TasksConfig(default_family=default, families=fams, serves=prof.families,
                           gsm_lite_kb_context=self.gsm_lite_kb_context)

    def kb_context(self, family: str) -> bool:
        """Whether prompts of ``family`` get retrieved KB context in a dataset."""
        if family == GSM_LITE:
            return self.gsm_lite_kb_context
        spec = self.families.get(family)
        return spec is not None and spec.kb_context

    def build(self, *, critic: Any = None) -> Families:
        """The :class:`Families` of this config; a critic-graded family needs ``critic`` (a CriticClient)."""
        fams = Families.from_config(self.families, default=self.default_family, critic=critic)
        if self.serves is not None:
            fams.by_name = {n: f for n, f in fams.by_name.items() if n in self.serves}
        return fams

    def needs_critic(self) -> bool:
        return any(spec.grader.kind == "critic" for spec in self.families.values())
