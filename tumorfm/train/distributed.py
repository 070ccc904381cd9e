"""One process or many: `torchrun --nproc_per_node N -m tumorfm pretrain ...` gives DDP (gloo on
CPU, nccl on GPU); `--fsdp` shards parameters, gradients and optimiser state (fully_shard) per
network stage, for presets too large for one device."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> Processes:
    """Join the process group torchrun describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    use_cuda = device.startswith("cuda")
    if world_size <= 1:
        return Processes(device=torch.device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Processes(
        dist.get_rank(),
        dist.get_world_size(),
        torch.device(f"cuda:{local_rank}" if use_cuda else "cpu"),
    )


def wrap(model: nn.Module, processes: Processes, fsdp: bool = False) -> nn.Module:
    """DDP, or FSDP2 (fully_shard) per encoder/decoder stage and transformer layer."""
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        layers = list(getattr(model.bottleneck, "layers", []))
        for module in [*model.encoder, *layers, *model.decoder]:
            fully_shard(module)
        return fully_shard(model)
    if not processes.distributed:
        return model
    device_ids = [processes.device.index] if processes.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def full_state_dict(model: nn.Module, fsdp: bool) -> dict[str, torch.Tensor]:
    """The whole model's weights on the CPU (gathered from the shards under FSDP)."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def optimizer_state(model: nn.Module, optimizer, fsdp: bool) -> dict:
    """The optimiser's whole state (gathered and keyed by parameter name under FSDP)."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        return get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return optimizer.state_dict()


def load_optimizer_state(model: nn.Module, optimizer, state: dict, fsdp: bool) -> None:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(
            model, optimizer, state, options=StateDictOptions(full_state_dict=True)
        )
    else:
        optimizer.load_state_dict(state)


def mean_over_processes(value: float, processes: Processes) -> float:
    if not processes.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item()) / processes.world_size


def barrier(processes: Processes) -> None:
    if processes.distributed:
        dist.barrier()


def teardown(processes: Processes) -> None:
    if processes.distributed and dist.is_initialized():
        dist.destroy_process_group()
