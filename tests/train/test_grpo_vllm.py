"""RL generation through TRL's vLLM integration: the settings TRL gets, and a clear error where vLLM cannot run.

vLLM needs a GPU; this machine has none, so the rollouts through vLLM run in scripts/gpu-check on a GPU host.
Here: the mapping onto TRL's GRPOConfig (the names TRL reads), the refusal on the CPU, the refusal when the
package is missing (this machine has no vllm: a real condition, not a mock), and the server mode's URL check.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest

pytest.importorskip("trl")

from pr1d.params import RLParams  # noqa: E402


def test_vllm_settings_are_grpo_config_fields():
    from trl import GRPOConfig

    from pr1d.train.grpo import vllm_settings

    names = {f.name for f in dataclasses.fields(GRPOConfig)}
    colocate = vllm_settings(RLParams(use_vllm=True, vllm_gpu_memory_utilization=0.4, vllm_tensor_parallel_size=2))
    assert colocate == {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.4,
                        "vllm_tensor_parallel_size": 2, "vllm_max_model_length": None}
    server = vllm_settings(RLParams(use_vllm=True, vllm_mode="server", vllm_server_url="http://10.0.0.5:8000"))
    assert server == {"use_vllm": True, "vllm_mode": "server", "vllm_server_base_url": "http://10.0.0.5:8000"}
    assert set(colocate) <= names and set(server) <= names


def test_off_by_default_and_refused_on_the_cpu(tmp_path):
    from pr1d.train.grpo import VLLMUnavailable, grpo_args, vllm_args

    assert vllm_args(RLParams(), use_cpu=True) == {}
    assert grpo_args(RLParams(), tmp_path, use_cpu=True).use_vllm is False
    with pytest.raises(VLLMUnavailable, match="needs a GPU.*use_vllm = false"):
        grpo_args(RLParams(use_vllm=True), tmp_path, use_cpu=True)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_missing_package_is_named_with_the_fix():
    from pr1d.train.grpo import VLLMUnavailable, vllm_args

    with pytest.raises(VLLMUnavailable, match="vllm is not installed.*pip install vllm"):
        vllm_args(RLParams(use_vllm=True), use_cpu=False)


def test_server_mode_needs_a_url():
    with pytest.raises(ValueError, match="vllm_server_url"):
        RLParams(use_vllm=True, vllm_mode="server")
    with pytest.raises(ValueError):
        RLParams(vllm_gpu_memory_utilization=1.5)
