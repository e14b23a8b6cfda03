"""Rollout workers: one vLLM engine each, sampling GRPO groups and taking new weights in place.

`RolloutEngine` is a plain class around an in-process vLLM `LLM` (no EngineCore subprocess: it starts in
seconds, seeded sampling repeats exactly, and new weights load without an RPC copy). `create_rollout_workers`
wraps it as Ray actors; `generate_with_workers` splits a step's prompts across them and merges in order.

    workers = create_rollout_workers(cfg.rollout, model_dir, count=2)
    completions = generate_with_workers(workers, prompts, seeds, policy_version=0, n=4, ...)

Each completion records the policy version of the weights that produced it, so the driver can bound staleness.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from actors.cores import CorePlan, pin_to_cores
from actors.resources import process_tree_rss_mb
from actors.split import split_evenly
from learner.weights import (
    Fingerprint,
    checksum_of,
    from_wire,
    synced_names,
    tensor_fingerprint,
    weight_checksum,
)

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from cluster.config import RolloutConfig

STOP_STRING = "</answer>"

# Test-only fault injection, "<worker index>:<version>": after loading that version, that engine's LM head computes
# with weights other than the ones it was sent (its checksum still matches), as the stale tied head once did.
CORRUPT_ENGINE_ENV = "GRPO_TEST_CORRUPT_ENGINE"
# The corrupted head is the loaded one times this: logits x4, i.e. sampling at a quarter of the temperature.
CORRUPT_HEAD_SCALE = 4.0
# Test-only fault injection, "<worker index>:<version>": that engine's process dies when it starts loading that
# version, in the middle of a sync (object store: the weights are fetched; collective: the broadcast is under way).
DIE_IN_SYNC_ENV = "GRPO_TEST_DIE_IN_SYNC"


@dataclass(frozen=True)
class Completion:
    """One sampled completion and everything the learner and the logs need about it."""

    prompt_index: int
    """Position of the prompt within the step's batch."""
    sample_index: int
    """0..n-1 within the prompt's group."""
    text: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    """Completion tokens only, (T_i,)."""
    engine_logprobs: list[float]
    """The engine's logprob of each sampled token under the distribution it sampled (logits / temperature), (T_i,);
    a diagnostic, the learner recomputes them."""
    finish_reason: str
    """`stop` (the stop string or EOS) or `length` (cut at max_tokens)."""
    policy_version: int


def request_seed(base_seed: int, step: int, prompt_index: int) -> int:
    """The sampling seed of one prompt's group: fixed by (trainer.seed, step, prompt index), whatever the worker.

    vLLM seeds sample i of a request with `seed + i`, so consecutive seeds per prompt would give sample i of one
    prompt and sample i - 1 of the next the same random stream (correlated groups). A hash keeps them apart.
    """
    digest = hashlib.blake2b(f"{base_seed}:{step}:{prompt_index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % (2**31 - 2**16)  # room for seed + i below 2**31


def engine_cpus(cfg: RolloutConfig) -> int:
    """Cores each engine may use: `rollout.cpus_per_worker`, or (0) the machine's cores shared by the R engines of
    a local cluster (phases alternate, so rollout may use every core), or 1 on a cluster joined via RAY_ADDRESS."""
    if cfg.cpus_per_worker:
        return cfg.cpus_per_worker
    if os.environ.get("RAY_ADDRESS"):
        return 1
    return max(1, len(os.sched_getaffinity(0)) // cfg.num_workers)


def engine_env(cfg: RolloutConfig, cores: list[int] | None = None) -> dict[str, str]:
    """Environment an engine's process needs before vLLM is imported (`cores`: the ones it is pinned to, if any)."""
    return {
        # The in-process engine runs torch on OMP_NUM_THREADS threads (vLLM forbids set_num_threads later).
        "OMP_NUM_THREADS": str(len(cores) if cores else engine_cpus(cfg)),
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # in-process engine
        "VLLM_CPU_KVCACHE_SPACE": str(cfg.kv_cache_gib),
        "TOKENIZERS_PARALLELISM": "false",
        # vLLM logs every fp32->bf16 weight cast at WARNING (hundreds of lines per start); errors still show.
        "VLLM_LOGGING_LEVEL": "ERROR",
    }


class RolloutEngine:
    """Owns one in-process vLLM engine; generates groups, greedy answers, and reloads weights in place."""

    def __init__(
        self, model_dir: str, cfg: RolloutConfig, seed: int, worker_index: int = 0, cores: list[int] | None = None
    ) -> None:
        os.environ.update(engine_env(cfg, cores))
        if cores:  # before vLLM and torch start their threads, so that every one of them inherits it
            pin_to_cores(cores)
        from vllm import LLM

        self.cfg = cfg
        self.dtype = getattr(torch, cfg.dtype)
        self.llm = LLM(
            model=model_dir,
            dtype=cfg.dtype,
            enforce_eager=True,
            max_model_len=cfg.max_model_len,
            seed=seed,
            distributed_executor_backend="uni",
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            # Logprobs of the distribution sampled from (after temperature), not of the raw logits: the learner
            # scores at the same temperature, so `train/logprob_mismatch` compares like with like.
            logprobs_mode="processed_logprobs",
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.tied = bool(json.loads((Path(model_dir) / "config.json").read_text()).get("tie_word_embeddings"))
        self.policy_version = 0
        self._checksum = self._checksum_from_disk(model_dir)
        self._corrupt_at_version = _hook_version(os.environ.get(CORRUPT_ENGINE_ENV, ""), worker_index)
        self._die_at_version = _hook_version(os.environ.get(DIE_IN_SYNC_ENV, ""), worker_index)

    def _checksum_from_disk(self, model_dir: str) -> str:
        """Checksum of the initial weights (version 0), read from the folder the engine loaded."""
        from safetensors.torch import load_file

        tensors: dict[str, torch.Tensor] = {}
        for file in sorted(Path(model_dir).glob("*.safetensors")):
            tensors.update(load_file(file))
        return weight_checksum(((n, tensors[n]) for n in synced_names(tensors, self.tied)), self.dtype)

    def _token_prompts(self, prompts: list[str]) -> list[TokensPrompt]:
        """Tokenize without adding special tokens: the chat template already wrote them."""
        from vllm.inputs import TokensPrompt

        return [TokensPrompt(prompt_token_ids=self.tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]

    def sampling_params(self, seed: int, n: int) -> SamplingParams:
        """The training sampler: n samples, the stop string kept in the text, the sampled tokens' logprobs."""
        from vllm import SamplingParams

        return SamplingParams(
            n=n,
            temperature=self.cfg.temperature,
            top_p=self.cfg.top_p,
            max_tokens=self.cfg.max_tokens,
            stop=[STOP_STRING],
            include_stop_str_in_output=True,
            logprobs=0,  # the sampled token's own logprob only
            seed=seed,
        )

    def generate(self, prompts: list[str], prompt_indices: list[int], seeds: list[int], n: int) -> list[Completion]:
        """n samples per prompt, each group seeded by its own seed; completions in (prompt, sample) order."""
        params = [self.sampling_params(seed, n) for seed in seeds]
        outputs = self.llm.generate(self._token_prompts(prompts), params, use_tqdm=False)
        completions = []
        for prompt_index, output in zip(prompt_indices, outputs, strict=True):
            for sample in sorted(output.outputs, key=lambda s: s.index):
                token_ids = list(sample.token_ids)
                logprobs = _sampled_logprobs(sample)
                completions.append(
                    Completion(
                        prompt_index=prompt_index,
                        sample_index=sample.index,
                        text=sample.text,
                        prompt_token_ids=list(output.prompt_token_ids),
                        token_ids=token_ids,
                        engine_logprobs=logprobs,
                        finish_reason=str(sample.finish_reason),
                        policy_version=self.policy_version,
                    )
                )
        return completions

    def generate_greedy(self, prompts: list[str], max_tokens: int | None = None) -> list[str]:
        """One greedy completion per prompt (eval, and proving which weights the engine uses)."""
        from vllm import SamplingParams

        params = SamplingParams(
            n=1,
            temperature=0.0,
            max_tokens=max_tokens or self.cfg.max_tokens,
            stop=[STOP_STRING],
            include_stop_str_in_output=True,
        )
        outputs = self.llm.generate(self._token_prompts(prompts), params, use_tqdm=False)
        return [out.outputs[0].text for out in outputs]

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> str:
        """Replace every weight in the live engine in ONE reload call, then drop the stale prefix cache.

        vLLM's `reload_weights` must see the whole model at once (per-bucket calls left it broken, STACK.md),
        so `named_tensors` may be a generator that streams buckets. Returns the checksum of what was loaded.
        """
        if version == self._die_at_version:  # test-only fault injection
            os._exit(1)
        received: list[Fingerprint] = []

        def recording(items: Iterable[tuple[str, torch.Tensor]]) -> Iterable[tuple[str, torch.Tensor]]:
            for name, tensor in items:
                received.append(tensor_fingerprint(name, tensor, self.dtype))
                yield name, tensor

        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": recording(named_tensors)})
        if self.tied:
            self.llm.collective_rpc(_retie_lm_head)
        if version == self._corrupt_at_version:  # test-only fault injection
            self.llm.collective_rpc(_scale_lm_head, args=(CORRUPT_HEAD_SCALE,))
        self.llm.reset_prefix_cache()
        # vLLM-CPU repacks linear layers into kernel objects, so the engine's own parameters cannot be read back;
        # the checksum is of exactly what this engine received and loaded.
        self._checksum = checksum_of(received)
        self.policy_version = version
        return self._checksum

    def load_from_wire(self, named_bits: list[tuple[str, np.ndarray]], version: int) -> str:
        """`load_weights` for the object-store transport: arrays from `to_wire`, read in place from shared memory."""
        return self.load_weights(((name, from_wire(bits, self.dtype)) for name, bits in named_bits), version)

    def probe(self, prompt_token_ids: list[int], num_tokens: int, seed: int) -> tuple[list[int], list[float]]:
        """Sample exactly `num_tokens` tokens after a fixed prompt with a fixed seed, at the training temperature;
        returns them and the engine's (processed) logprob of each, for the driver to compare with the learner's.

        EOS is sampled through (`ignore_eos`), never masked (`min_tokens` would change the processed logprobs).
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(
            n=1, temperature=self.cfg.temperature, max_tokens=num_tokens, ignore_eos=True, logprobs=0, seed=seed
        )
        [output] = self.llm.generate([TokensPrompt(prompt_token_ids=prompt_token_ids)], params, use_tqdm=False)
        # Training prompts share the probe's chat-template prefix: KV cached from a batch of a different shape could
        # round differently and change what the next step samples, so the probe leaves nothing in the cache.
        self.llm.reset_prefix_cache()
        sample = output.outputs[0]
        tokens = list(sample.token_ids)
        return tokens, _sampled_logprobs(sample)

    def join_sync_group(self, host: str, port: int, rank: int, world_size: int) -> None:
        """Join the learner's side gloo group for the `collective` weight sync (rank 0 is the learner).

        Blocks until every member has joined: start all members' joins before waiting on any.
        """
        from learner.sync import create_sync_group

        self._sync_group = create_sync_group(host, port, rank, world_size)

    def receive_weights(self, version: int) -> str:
        """Receive one collective sync and stream it into the engine in one reload; returns the loaded checksum."""
        from learner.sync import receive_weights

        return self.load_weights(receive_weights(self._sync_group), version)

    def set_policy_version(self, version: int) -> None:
        """A step that changed no weight (no row had signal) still makes a new version, equal to the last one."""
        self.policy_version = version

    def checksum(self) -> str:
        return self._checksum

    def health(self) -> int:
        return self.policy_version

    def rss_mb(self) -> float:
        return process_tree_rss_mb()


def _retie_lm_head(worker: Any) -> None:
    """Point the tied LM head at the reloaded embedding again and re-run its post-load processing.

    `reload_weights` rebuilds the embedding layer but never touches `lm_head`, which loads no weights of its own
    when tied; on CPU the head keeps a packed GEMM copy of the OLD embedding, so logits came from stale weights
    (engine vs learner logprobs drifted by 0.3 after one lr=1e-2 step before this). Runs inside the engine.
    """
    model = worker.get_model()
    model.lm_head.weight = model.model.embed_tokens.weight
    model.lm_head.quant_method.process_weights_after_loading(model.lm_head)


def _sampled_logprobs(sample: Any) -> list[float]:
    """The engine's logprob of each token it sampled (vLLM returns one {token_id: Logprob} dict per position)."""
    return [step[token].logprob for step, token in zip(sample.logprobs, sample.token_ids, strict=True)]


def _scale_lm_head(worker: Any, factor: float) -> None:
    """Test-only: repack the LM head from its weight times `factor`, leaving the embedding as loaded (runs inside the
    engine). The head is then computed with weights the engine was never sent, like the stale tied head."""
    head = worker.get_model().lm_head
    head.weight = torch.nn.Parameter(head.weight.detach() * factor, requires_grad=False)
    head.quant_method.process_weights_after_loading(head)


def _hook_version(hook: str, worker_index: int) -> int | None:
    """The version a test-only hook ("<worker index>:<version>") fires at for this engine; None: never."""
    if not hook:
        return None
    index, _, version = hook.partition(":")
    return int(version) if int(index) == worker_index else None


def engine_bundle(cfg: RolloutConfig) -> dict[str, float]:
    """What one engine asks Ray for: its cores, its GPU share, and the node resource that pins it."""
    bundle = {"CPU": float(engine_cpus(cfg))}
    if cfg.gpus_per_worker:
        bundle["GPU"] = cfg.gpus_per_worker
    if cfg.resource:
        bundle[cfg.resource] = 0.001
    return bundle


def create_rollout_workers(
    cfg: RolloutConfig,
    model_dir: str,
    seed: int,
    count: int,
    first_index: int = 0,
    placements: list | None = None,
    cores: CorePlan | None = None,
) -> list:
    """Start `count` rollout actors, each with its own engine, and wait until every engine is up.

    The engines are rollout workers `first_index`, `first_index + 1`, ... of the run. `placements`: one placement
    group per engine, each holding one `engine_bundle` (None: Ray places them, with the same request). With a core
    plan each engine is pinned to its share of the cores.
    """
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    bundle = engine_bundle(cfg)
    custom = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")}
    actor_cls = ray.remote(RolloutEngine)
    workers = []
    for offset in range(count):
        own = cores.engine_cores(first_index + offset) if cores else None
        actor = actor_cls.options(
            num_cpus=bundle["CPU"],
            num_gpus=cfg.gpus_per_worker,
            resources=custom if placements is None else {},  # inside a placement group, its bundle holds them
            scheduling_strategy=None if placements is None else PlacementGroupSchedulingStrategy(placements[offset]),
            runtime_env={"env_vars": engine_env(cfg, own)},
        )
        workers.append(actor.remote(model_dir, cfg, seed, first_index + offset, own))
    ray.get([worker.health.remote() for worker in workers])
    return workers


def generate_with_workers(workers: list, prompts: list[str], seeds: list[int], n: int) -> list[Completion]:
    """Split the step's prompts across workers, start every call, then gather once, in prompt order."""
    import ray

    calls = [
        worker.generate.remote([prompts[i] for i in chunk], list(chunk), [seeds[i] for i in chunk], n)
        for worker, chunk in zip(workers, split_evenly(len(prompts), len(workers)), strict=True)
        if len(chunk)
    ]
    return [completion for part in ray.get(calls) for completion in part]
