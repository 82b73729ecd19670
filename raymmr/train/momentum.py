"""The momentum encoders' EMA (CMDPI Eq. 6, the targets of C_intra), accumulated in fp32.

theta_m <- m * theta_m + (1 - m) * theta after every optimizer step, m = ``model.momentum``.

Under bf16 DeepSpeed casts every module parameter, the momentum copies included. One EMA step
moves a weight by (1 - m) = 0.005 of its distance to the online weight: below half a bf16 ulp for
most weights, so an EMA computed in bf16 rounds nearly every update away (LayerNorm gains near 1.0
never move) and C_intra contrasts against a frozen encoder. So the EMA runs on an fp32 copy of
the momentum parameters, and the bf16 parameters the forward reads are rounded from it after each
update; in fp32 training the parameters are the EMA themselves. Under ZeRO-3 each rank holds only
its partition (``ds_tensor``) of every parameter; online and momentum copies are split
identically, so the EMA runs partition-wise, with no gather.

The fp32 copy is saved with every checkpoint (``MOMENTUM_STATE``) and restored with it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from raymmr import storage

MOMENTUM_STATE = "momentum-rank-{rank}.safetensors"


class MomentumEMA:
    def __init__(self, model, *, zero3: bool):
        """Build after the engine (it casts the parameters): the EMA starts from the parameters as
        the engine holds them."""
        self.momentum = model.cfg.momentum
        self.zero3 = zero3
        self.pairs = model.momentum_pairs()
        self.fp32 = all(self._local(q).dtype == torch.float32 for _, q in self.pairs)
        self.ema = self._from_parameters()

    def _local(self, p: torch.nn.Parameter) -> Tensor:
        # Looked up at every use: loading a checkpoint may give a parameter new storage.
        return p.ds_tensor if self.zero3 else p.data

    def _from_parameters(self) -> list[Tensor] | None:
        return None if self.fp32 else [self._local(q).detach().float().clone() for _, q in self.pairs]

    @torch.no_grad()
    def update(self) -> None:
        online = [self._local(p) for p, _ in self.pairs]
        params = [self._local(q) for _, q in self.pairs]
        if self.fp32:
            torch._foreach_lerp_(params, online, 1.0 - self.momentum)
            return
        torch._foreach_lerp_(self.ema, [t.float() for t in online], 1.0 - self.momentum)
        torch._foreach_copy_(params, self.ema)

    def state(self) -> list[Tensor]:
        """The EMA, fp32, in ``model.momentum_pairs()`` order (this rank's partitions under ZeRO-3)."""
        return [self._local(q).float() for _, q in self.pairs] if self.fp32 else self.ema

    def save(self, directory: str, rank: int) -> None:
        """Into a checkpoint directory being written: every rank's partition under ZeRO-3, rank 0's
        whole copy otherwise (all ranks hold the same). Nothing in fp32 training: the module
        states hold the EMA itself."""
        from safetensors.torch import save_file

        if self.fp32 or (rank != 0 and not self.zero3):
            return
        save_file({str(i): t.contiguous() for i, t in enumerate(self.ema)},
                  storage.join(directory, MOMENTUM_STATE.format(rank=rank)))

    def restore(self, checkpoint: str, *, rank: int, same_world: bool) -> str:
        """After the engine loaded ``checkpoint`` (a directory or URL): the EMA from its saved fp32
        copy where this rank's can be read, else from the loaded momentum parameters. Returns how."""
        from safetensors.torch import load as load_safetensors

        if self.fp32:
            return "fp32 parameters"
        saved = storage.join(checkpoint, MOMENTUM_STATE.format(rank=rank if self.zero3 else 0))
        if (same_world or not self.zero3) and storage.exists(saved):
            tensors = load_safetensors(storage.read_bytes(saved))
            if len(tensors) == len(self.pairs) and all(
                    tensors[str(i)].shape == self._local(q).shape for i, (_, q) in enumerate(self.pairs)):
                self.ema = [tensors[str(i)].to(self._local(q).device) for i, (_, q) in enumerate(self.pairs)]
                return "fp32 copy"
        # Another world size under ZeRO-3 partitions differently: start from the loaded weights
        # (rounded once to bf16; the EMA continues in fp32 from there).
        self.ema = self._from_parameters()
        return "re-initialised from the loaded bf16 momentum weights"
