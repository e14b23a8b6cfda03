"""Test-only engine variants that Ray workers import by module path (tests/ is on their PYTHONPATH)."""

from __future__ import annotations

from vllm import SamplingParams
from vllm.sampling_params import StructuredOutputsParams

from actors.rollout import RolloutEngine

# Guided decoding masks the logits so the engine must write this layout; the layout continues past </answer>,
# so the only thing that can end a completion exactly there is the engine's own stop-string handling.
FORMAT_THEN_MORE = r"<think>\n[a-z]{1,8}\n</think>\n<answer>\n[0-9]{1,3}\n</answer>\n[a-z]{5,10}"


class GuidedRolloutEngine(RolloutEngine):
    def sampling_params(self, seed: int, n: int) -> SamplingParams:
        params = super().sampling_params(seed, n)
        params.structured_outputs = StructuredOutputsParams(regex=FORMAT_THEN_MORE)
        return params
