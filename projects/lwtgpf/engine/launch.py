"""Multi-process launch that also works without GPUs.

fast-reid's `launch` hard-codes the NCCL backend and asserts CUDA; this one picks NCCL for
CUDA and gloo for CPU, so `--num-gpus N` with `MODEL.DEVICE cpu` runs N CPU processes.
"""
import logging
import socket
from typing import Callable, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fastreid.utils import comm


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(main_func: Callable, num_processes: int, num_machines: int = 1, machine_rank: int = 0,
           dist_url: str = "auto", use_cuda: bool = True, args: Tuple = ()) -> None:
    """Run `main_func(*args)` in `num_processes` processes per machine (or inline for one)."""
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
    for i in range(world_size // num_processes):
        group = dist.new_group(list(range(i * num_processes, (i + 1) * num_processes)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    main_func(*args)
