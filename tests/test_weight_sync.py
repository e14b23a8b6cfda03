"""Weight sync between the real FSDP2 learner group and real vLLM rollout actors, for both transports."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import torch

from actors.rollout import create_rollout_workers
from cluster.config import load_config
from cluster.placement import Workers
from cluster.step import train_batch
from tests.conftest import GSM8K_DIR

PROMPTS = ["Hello there", "What is 2+2?", "Name a colour.", "Count to three."]


def _mean_gap(workers: Workers, step: int) -> float:
    """Mean |engine - learner| logprob on fresh samples: the engines really compute with the learner's weights."""
    completions = workers.generate(PROMPTS, seed=0, step=step)
    learner = workers.learner.logprobs(train_batch(completions, [0.0] * len(completions)))
    gaps = [
        abs(e - lp)
        for c, row in zip(completions, learner, strict=True)
        for e, lp in zip(c.engine_logprobs, row, strict=True)
    ]
    return sum(gaps) / len(gaps)


@pytest.mark.parametrize("transport", ["object_store", "collective"])
def test_sync_matches_learner_after_updates(
    ray_cluster: None, tiny_model_dir: Path, tmp_path: Path, transport: str
) -> None:
    cfg = load_config(
        None,
        [
            f"model.path={tiny_model_dir}",
            f"data.source={GSM8K_DIR}",
            "data.prompts_per_step=4",
            "rollout.num_workers=2",
            "rollout.max_tokens=12",
            "rollout.max_model_len=256",
            "learner.num_ranks=2",
            "learner.lr=1e-2",
            f"sync.transport={transport}",
        ],
    )
    workers = Workers.start(cfg, tiny_model_dir)
    try:
        gap_before = _mean_gap(workers, step=1)
        greedy_before = ray.get(workers.rollout[0].generate_greedy.remote(PROMPTS))
        for step in (1, 2):
            completions = workers.generate(PROMPTS, seed=0, step=step)
            advantages = torch.randn(len(completions), generator=torch.Generator().manual_seed(step)).tolist()
            workers.learner.train_step(train_batch(completions, advantages))
            workers.sync_weights(version=step)
            expected = workers.learner.checksum()
            assert ray.get([w.checksum.remote() for w in workers.rollout]) == [expected, expected]
            assert ray.get([w.health.remote() for w in workers.rollout]) == [step, step]
        greedy_after = ray.get([w.generate_greedy.remote(PROMPTS) for w in workers.rollout])
        assert greedy_after[0] != greedy_before and greedy_after[0] == greedy_after[1]
        gap_after = _mean_gap(workers, step=3)
        print(f"{transport}: engine-learner logprob gap {gap_before:.4f} before, {gap_after:.4f} after two updates")
        assert gap_after < max(2 * gap_before, 0.01)

        # What the learner's own weights produce: a fresh engine built from the learner's saved policy.
        final = tmp_path / "final"
        workers.learner.save_hf(str(final))
        [fresh] = create_rollout_workers(cfg.rollout, str(final), seed=0, count=1)
        assert ray.get(fresh.generate_greedy.remote(PROMPTS)) == greedy_after[0]
        ray.kill(fresh)
    finally:
        workers.shutdown()
