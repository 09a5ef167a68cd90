"""Multi-process launch that also works without GPUs, from `--num-gpus` or from torchrun.

fast-reid's `launch` hard-codes the NCCL backend and asserts CUDA; this one picks NCCL for
CUDA and gloo for CPU, so `--num-gpus N` with `MODEL.DEVICE cpu` runs N CPU processes. Under
torchrun (or any launcher that sets RANK, LOCAL_RANK and WORLD_SIZE, with MASTER_ADDR and
MASTER_PORT) the processes already exist: each joins the process group from the environment.
"""
import logging
import os
import socket
from typing import Callable, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fastreid.utils import comm

_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def started_by_torchrun() -> bool:
    """Whether this process was started by torchrun (or another launcher setting its variables)."""
    return all(name in os.environ for name in _TORCHRUN_VARS)


def launch(main_func: Callable, num_processes: int, num_machines: int = 1, machine_rank: int = 0,
           dist_url: str = "auto", use_cuda: bool = True, args: Tuple = ()) -> None:
    """Run `main_func(*args)` in `num_processes` processes per machine (or inline for one); under
    torchrun, in this process, after joining the process group that torchrun describes."""
    if started_by_torchrun():
        if num_processes != 1 or num_machines != 1:
            raise ValueError("started by torchrun (RANK, LOCAL_RANK and WORLD_SIZE are set): torchrun starts the "
                             "processes, so leave out --num-gpus / --num-machines and use torchrun's "
                             "--nproc-per-node / --nnodes")
        _join_from_environment(use_cuda)
        _run_then_leave(main_func, args)
        return
    world_size = num_machines * num_processes
    if world_size == 1:
        main_func(*args)
        return
    if use_cuda and torch.cuda.device_count() < num_processes:
        raise ValueError(f"--num-gpus {num_processes} but only {torch.cuda.device_count()} CUDA devices are visible; "
                         "use MODEL.DEVICE cpu for CPU processes")
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("--dist-url auto only works on one machine")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    mp.spawn(_worker, nprocs=num_processes, daemon=False,
             args=(main_func, world_size, num_processes, machine_rank, dist_url, use_cuda, args))


def _join_from_environment(use_cuda: bool) -> None:
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    if use_cuda:
        if torch.cuda.device_count() <= local_rank:
            raise ValueError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices are visible; "
                             "start at most that many processes per node, or use MODEL.DEVICE cpu")
        torch.cuda.set_device(local_rank)
    if world_size == 1:
        return
    if world_size % local_size:
        raise ValueError(f"WORLD_SIZE {world_size} is not a multiple of LOCAL_WORLD_SIZE {local_size}: every node "
                         "must run the same number of processes")
    dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://")
    _set_local_group(rank // local_size, local_size, world_size)


def _set_local_group(machine_rank: int, num_processes: int, world_size: int) -> None:
    """fastreid's per-machine process group (its get_local_rank / get_local_size read it)."""
    for i in range(world_size // num_processes):
        group = dist.new_group(list(range(i * num_processes, (i + 1) * num_processes)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()


def _worker(local_rank, main_func, world_size, num_processes, machine_rank, dist_url, use_cuda, args):
    rank = machine_rank * num_processes + local_rank
    try:
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method=dist_url,
                                world_size=world_size, rank=rank)
    except Exception:
        logging.getLogger(__name__).error(f"Process group URL: {dist_url}")
        raise
    if use_cuda:
        torch.cuda.set_device(local_rank)
    _set_local_group(machine_rank, num_processes, world_size)
    _run_then_leave(main_func, args)


def _run_then_leave(main_func: Callable, args: Tuple) -> None:
    """Run `main_func`, then destroy the process group: a gloo group still alive at interpreter exit can
    abort the process (SIGABRT, "terminate called without an active exception") after a successful run."""
    try:
        main_func(*args)
        if dist.is_initialized():
            dist.barrier()  # no process tears its group down while another still talks to it
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
