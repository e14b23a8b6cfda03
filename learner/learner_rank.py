"""One rank of the FSDP2 learner: recompute old logprobs, clipped-loss passes, AdamW, weights out, checkpoints.

A plain class (tested through Ray, where each rank is a process); `learner/group.py` starts L of them as Ray
actors that form one torch.distributed group (gloo on CPU, NCCL on GPU). Every method that touches the model
is collective: the driver calls it on all ranks at once.
"""

from __future__ import annotations

import gc
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from actors.cores import pin_to_cores
from learner.batch import PackedBatch, TrainBatch, make_units, pack, plan_micro_batches
from learner.grpo import aggregate_loss, clipped_policy_loss, kl_penalty, truncated_is_weights
from learner.policy import LM_PREFIX, ScoredPolicy
from learner.weights import synced_names, to_wire, torch_dtype, weight_checksum

if TYPE_CHECKING:
    from cluster.config import LearnerConfig

# Completion tokens per chunk of the head's logits: a (1024, 49152) float32 block is 200 MB.
LOGPROB_CHUNK_TOKENS = 1024

# Files copied from the source model folder into `final/` next to the trained weights.
_HF_SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
)


def _sharded(model: ScoredPolicy, shard: dict) -> ScoredPolicy:
    """FSDP2 over each decoder layer, then over the whole policy (the embedding / head with the root)."""
    for layer in model.lm.model.layers:
        fully_shard(layer, **shard)
    fully_shard(model, **shard)
    return model


# Token-weighted sums a train step reduces over ranks once: the loss, the metrics `_loss` returns (token-means of
# a micro-batch), the first pass's entropy and engine mismatch, then scored tokens and skipped updates.
_SUMS = (
    "loss",
    "clip_frac",
    "ratio_mean",
    "policy_kl",
    "ref_kl",
    "is_weight_mean",
    "is_truncated_frac",
    "entropy",
    "mismatch",
    "tokens",
    "skipped",
)
_S = {name: index for index, name in enumerate(_SUMS)}


class LearnerRank:
    def __init__(
        self,
        rank: int,
        world_size: int,
        master_addr: str,
        master_port: int,
        model_dir: str,
        cfg: LearnerConfig,
        temperature: float,
        sync_dtype: str,
        seed: int,
        cores: list[int] | None = None,
    ) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM

        self.rank, self.world_size, self.cfg, self.model_dir = rank, world_size, cfg, model_dir
        self.device = (
            torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        )
        if cores:  # rollout runs alongside training (actors/cores.py): this rank computes on its own cores only
            pin_to_cores(cores)
            torch.set_num_threads(len(cores))
        elif self.device.type == "cpu":
            # Rollout and training phases alternate, so the learner may use every core while it runs.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, init_method=f"tcp://{master_addr}:{master_port}", rank=rank, world_size=world_size
        )
        torch.manual_seed(seed + rank)
        self.hf_config = AutoConfig.from_pretrained(model_dir)
        lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(self.device)
        if cfg.activation_checkpointing:  # recompute each decoder layer in backward: activations of one layer live
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        mixed = cfg.param_dtype == "bfloat16"
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed else None
        # With one rank there is nothing to free between forward and backward: keeping the gathered (and, in bf16,
        # cast) layer weights saves gathering and casting them again in backward.
        shard = {"reshard_after_forward": world_size > 1, **({"mp_policy": policy} if policy else {})}
        self.model = _sharded(ScoredPolicy(lm, temperature, LOGPROB_CHUNK_TOKENS), shard)
        # The KL reference is the initial policy, frozen: sharded like the policy, no optimizer state, and in bf16
        # when the policy computes in bf16. Casting the fp32 weights (not the buffers: rotary frequencies stay fp32)
        # gives exactly the bf16 weights FSDP's mixed precision computes with, so at step 1 the KL is 0 (up to
        # the rounding of kernels that differ between a forward under autograd and one under no_grad).
        # It is never checkpointed: a resumed run reloads it from model_dir, which holds the same initial weights.
        self.reference: ScoredPolicy | None = None
        if cfg.kl_coef > 0:
            ref_lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(self.device)
            ref_lm.requires_grad_(False).eval()
            for param in ref_lm.parameters():
                param.data = param.data.to(torch.bfloat16 if mixed else torch.float32)
            ref_shard = {"reshard_after_forward": world_size > 1}
            self.reference = _sharded(ScoredPolicy(ref_lm, temperature, LOGPROB_CHUNK_TOKENS), ref_shard).eval()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.pad_token_id = self.hf_config.eos_token_id if isinstance(self.hf_config.eos_token_id, int) else 0
        self.sync_dtype = torch_dtype(sync_dtype)
        self.tied = bool(getattr(self.hf_config, "tie_word_embeddings", False))
        self.skipped_steps = 0
        # Test-only fault injection: the loss of this (1-based) learner step becomes NaN.
        hook = os.environ.get("GRPO_TEST_NAN_AT_STEP")
        self.nan_hook_step: int | None = int(hook) if hook else None
        self.steps_done = 0

    # ---- training -------------------------------------------------------------------------------------------

    def _micro_batches(self, batch: TrainBatch) -> list[PackedBatch]:
        """This rank's rows packed into token-budget micro-batches, as many on every rank.

        FSDP2 gathers each layer's weights in every forward, a collective: a rank with fewer micro-batches (or no
        rows) runs empty ones (one pad token, nothing scored), which add exactly zero to loss and gradient.
        """
        units = make_units(batch, self.cfg.shared_prompt)
        plan = plan_micro_batches(units, batch, self.cfg.max_tokens_per_micro_batch) if units else []
        count = torch.tensor([len(plan)], device=self.device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        plan += [[] for _ in range(int(count.item()) - len(plan))]
        return [pack(units, batch, self.pad_token_id).to(self.device) for units in plan]

    def train_step(
        self, batch: TrainBatch, loss_denominator: float, global_rows: int
    ) -> tuple[dict[str, float], list[float]]:
        """One GRPO update on this rank's rows; metrics are reduced over all ranks (token-weighted).

        `loss_denominator` is the step's global normalizer (`learner.grpo.loss_denominator`): it counts every
        completion token / row of the step, including rows left out because their advantage is 0 (without a KL term
        they add exactly nothing to the loss), so the update equals the one over the full batch.
        `global_rows` is the number of rows sent to all ranks: with none, no rank runs a pass or an optimizer step.
        The old logprobs are the first pass's own logprobs, detached: every micro-batch of that pass runs before
        the first optimizer step, so they are exactly the current weights' logprobs, without a separate forward.
        Returns the metrics and, per row of `batch`, the summed logprob of its tokens from that first pass.
        """
        self.steps_done += 1
        micro = self._micro_batches(batch) if global_rows else []
        sums = torch.zeros(len(_SUMS), dtype=torch.float64)  # token-weighted sums, named by _SUMS
        row_logprobs = torch.zeros(len(batch), dtype=torch.float64)  # (rows,)
        old_logprobs: list[torch.Tensor] = []
        ref_logprobs: list[torch.Tensor | None] = []
        updates, grad_norm = 0, torch.tensor(0.0)
        self.model.train()
        for epoch in range(self.cfg.ppo_epochs if micro else 0):
            for index, mb in enumerate(micro):
                logprobs, entropy = self.model.score(mb)  # (M,), (M,)
                if epoch == 0:
                    old_logprobs.append(logprobs.detach())
                    ref_logprobs.append(self._reference_logprobs(mb))
                    sums[_S["entropy"]] += entropy.double().sum().cpu()
                    sums[_S["mismatch"]] += (logprobs.detach() - mb.engine_logprobs).abs().double().sum().cpu()
                    sums[_S["tokens"]] += mb.num_tokens
                    rows = torch.tensor(mb.rows, dtype=torch.long)[mb.token_row.cpu()]  # (M,)
                    row_logprobs.index_add_(0, rows, logprobs.detach().double().cpu())
                loss, metrics = self._loss(mb, logprobs, old_logprobs[index], ref_logprobs[index], loss_denominator)
                if self.nan_hook_step == self.steps_done:  # test-only fault injection
                    loss = loss * float("nan")
                # FSDP averages gradients over ranks; each rank's loss is already its share of the global mean.
                (loss * self.world_size).backward()
                sums[_S["loss"]] += loss.detach().double().cpu() / self.cfg.ppo_epochs
                for name, value in metrics.items():  # token-means of this micro-batch, weighted by its tokens
                    sums[_S[name]] += value.double().cpu() * mb.num_tokens / self.cfg.ppo_epochs
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
            if isinstance(grad_norm, DTensor):
                grad_norm = grad_norm.full_tensor()
            finite = torch.tensor([float(math.isfinite(float(grad_norm)))], device=self.device)
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)  # every rank skips together or steps together
            if finite.item() == 1.0:
                self.optimizer.step()
                updates += 1
            else:
                self.skipped_steps += 1
                sums[_S["skipped"]] += 1.0 / self.world_size  # summed over ranks below: one per skipped update
            self.optimizer.zero_grad(set_to_none=True)
        sums = sums.to(self.device)
        dist.all_reduce(sums)
        sums = sums.cpu()
        scored_tokens = float(sums[_S["tokens"]])

        def token_mean(name: str, measured: bool = True) -> float:  # NaN when nothing was measured
            return float(sums[_S[name]]) / scored_tokens if scored_tokens and measured else float("nan")

        metrics = {
            "grpo_loss": float(sums[_S["loss"]]),
            "train/clip_frac": token_mean("clip_frac"),
            "train/policy_kl": token_mean("policy_kl"),
            "train/ref_kl": token_mean("ref_kl", self.reference is not None),
            "train/is_weight_mean": token_mean("is_weight_mean", self.cfg.is_correction == "tis"),
            "train/is_truncated_frac": token_mean("is_truncated_frac", self.cfg.is_correction == "tis"),
            "train/entropy": token_mean("entropy"),
            "train/logprob_mismatch": token_mean("mismatch"),
            "train/ratio_mean": token_mean("ratio_mean"),
            "train/tokens_trained": scored_tokens,
            "train/grad_norm": float(grad_norm),
            "train/updates": float(updates),
            "train/skipped": float(round(float(sums[_S["skipped"]]))),
            "train/skipped_steps": float(self.skipped_steps),
        }
        return metrics, row_logprobs.tolist()

    def _reference_logprobs(self, mb: PackedBatch) -> torch.Tensor | None:
        """(M,) the frozen initial policy's logprobs of the micro-batch's tokens; None without a KL term."""
        if self.reference is None:
            return None
        with torch.no_grad():
            return self.reference.score(mb)[0]

    def _loss(
        self,
        mb: PackedBatch,
        logprobs: torch.Tensor,  # (M,)
        old_logprobs: torch.Tensor,  # (M,)
        ref_logprobs: torch.Tensor | None,  # (M,)
        denominator: float,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """This micro-batch's share of the step's loss (learner.grpo, on its completions as rows), and its metrics
        (token-means over its tokens)."""
        cfg = self.cfg
        lp, mask = mb.by_row(logprobs)  # (R, T), (R, T)
        old = mb.by_row(old_logprobs)[0]  # (R, T)
        advantages = mb.by_row(mb.advantages)[0][:, 0]  # (R,): every token of a row carries its advantage
        weights, metrics = None, {}
        if cfg.is_correction == "tis":
            weights, metrics = truncated_is_weights(old, mb.by_row(mb.engine_logprobs)[0], mask, cfg.is_cap)
        sequence = cfg.ratio_level == "sequence"  # GSPO's sequence ratio has its own, much narrower, clip range
        low, high = (cfg.seq_clip_eps, cfg.seq_clip_eps_high) if sequence else (cfg.clip_eps, cfg.clip_eps_high)
        per_token, policy_metrics = clipped_policy_loss(lp, old, advantages, mask, low, high, cfg.ratio_level, weights)
        metrics.update(policy_metrics)
        if ref_logprobs is not None:
            kl = kl_penalty(lp, mb.by_row(ref_logprobs)[0], mask, cfg.kl_estimator)  # (R, T), 0 off the mask
            per_token = per_token + cfg.kl_coef * kl
            metrics["ref_kl"] = kl.detach().sum() / max(1, mb.num_tokens)
        return aggregate_loss(per_token, mask, cfg.loss_agg, denominator), metrics

    def logprobs(self, batch: TrainBatch) -> list[list[float]]:
        """The current policy's logprob of every completion token (no update), per row in the given order."""
        self.model.eval()
        rows: list[list[float]] = [[] for _ in range(len(batch))]
        with torch.no_grad():
            for mb in self._micro_batches(batch):
                logprobs = self.model.score(mb)[0].cpu()  # (M,)
                token_row = mb.token_row.cpu()
                for local, row in enumerate(mb.rows):
                    rows[row] = logprobs[token_row == local].tolist()
        return rows

    def set_nan_hook(self, step: int | None) -> None:
        """Test-only: make the loss NaN at the given step so the skip path runs for real."""
        self.nan_hook_step = step

    # ---- weights out ----------------------------------------------------------------------------------------

    def full_state(self) -> dict[str, torch.Tensor]:
        """Collective: gather the full weights on rank 0 (in the sync dtype, tied head dropped); {} elsewhere."""
        state = self._full_hf_state()
        return {name: tensor.to(self.sync_dtype) for name, tensor in state.items()}

    def _full_hf_state(self) -> dict[str, torch.Tensor]:
        """Collective: full fp32 weights under Hugging Face names on rank 0 (tied head dropped); {} elsewhere."""
        state = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.rank != 0:
            return {}
        state = {name.removeprefix(LM_PREFIX): tensor for name, tensor in state.items()}
        return {name: state[name] for name in synced_names(state, self.tied)}

    def publish_weights(self) -> tuple[list, str]:
        """Collective: rank 0 puts the full weights in the object store once.

        Returns ([ref], checksum) on rank 0 (the ref in a list so Ray hands back the reference, not the
        weights), ([], "") elsewhere. The object holds `list[(name, to_wire(tensor))]` for `load_from_wire`.
        """
        import ray

        state = self.full_state()
        if self.rank != 0:
            return [], ""
        ref = ray.put([(name, to_wire(tensor)) for name, tensor in state.items()])
        return [ref], weight_checksum(state.items(), self.sync_dtype)

    def open_sync_group(self, host: str, port: int, world_size: int) -> None:
        """Rank 0 only: host the side gloo group of the `collective` transport (rollout engines are ranks 1..N)."""
        from learner.sync import create_sync_group

        self._sync_group = create_sync_group(host, port, 0, world_size)

    def broadcast_weights(self) -> str:
        """Collective over learner ranks: gather, then rank 0 broadcasts in buckets; returns the checksum there.

        Rank 0 keeps what it sent (`publish_pushed`). If a member dies mid-broadcast, rank 0 frees the group, which
        closes its connections, so the other members fail at once instead of blocking until gloo's timeout (the
        group's `abort()` and `shutdown()` did not unblock them; measured with torch 2.13's gloo).
        """
        from learner.sync import broadcast_weights

        state = self.full_state()
        if self.rank != 0:
            return ""
        self._pushed = state
        failure = ""
        try:
            broadcast_weights(self._sync_group, state.items(), self.sync_dtype, tie_word_embeddings=self.tied)
        except RuntimeError as err:
            failure = str(err)  # not the error itself: its traceback's frames would keep the group alive
        if failure:
            self._sync_group = None
            gc.collect()
            raise RuntimeError(f"weight broadcast broken (a member of the sync group left): {failure}")
        return weight_checksum(state.items(), self.sync_dtype)

    def publish_pushed(self) -> tuple[list, str]:
        """Rank 0 only: the weights of the last `broadcast_weights`, put in the object store, and their checksum
        (for an engine that must catch up with the version the others hold, while this rank may be further on)."""
        import ray

        ref = ray.put([(name, to_wire(tensor)) for name, tensor in self._pushed.items()])
        return [ref], weight_checksum(self._pushed.items(), self.sync_dtype)

    def sync_endpoint(self) -> tuple[str, int]:
        """Where this rank can host a rendezvous: its node's address and a free port there."""
        from learner.rendezvous import address_and_free_port

        return address_and_free_port()

    def checksum(self) -> str:
        """Collective: the checksum a rollout engine must report after syncing these weights."""
        state = self.full_state()
        return weight_checksum(state.items(), self.sync_dtype) if self.rank == 0 else ""

    def save_hf(self, out_dir: str) -> None:
        """Collective: write the policy as an HF folder (safetensors + config + tokenizer) on rank 0."""
        from safetensors.torch import save_file

        state = self._full_hf_state()
        if self.rank != 0:
            return
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        kept = {name: tensor.contiguous() for name, tensor in state.items()}
        save_file(kept, out / "model.safetensors", metadata={"format": "pt"})
        for name in _HF_SIDE_FILES:
            if (Path(self.model_dir) / name).is_file():
                shutil.copy(Path(self.model_dir) / name, out / name)

    # ---- checkpoints ----------------------------------------------------------------------------------------

    def save_checkpoint(self, ckpt_dir: str) -> None:
        """Collective: sharded model + optimizer (torch.distributed.checkpoint) and this rank's RNG state."""
        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=ckpt_dir)
        torch.save(
            {"rng": torch.get_rng_state(), "skipped_steps": self.skipped_steps, "steps_done": self.steps_done},
            Path(ckpt_dir) / f"rank{self.rank}_state.pt",
        )

    def load_checkpoint(self, ckpt_dir: str) -> None:
        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        state = {"model": model_state, "optim": optim_state}
        dcp.load(state, checkpoint_id=ckpt_dir)
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        extra = torch.load(Path(ckpt_dir) / f"rank{self.rank}_state.pt", weights_only=False)
        torch.set_rng_state(extra["rng"])
        self.skipped_steps, self.steps_done = extra["skipped_steps"], extra["steps_done"]

    def ready(self) -> int:
        return self.rank

    def rss_mb(self) -> float:
        from actors.resources import process_tree_rss_mb

        return process_tree_rss_mb()

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
