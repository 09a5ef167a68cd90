"""tools/train_net.py that stops dead at a chosen point, so that a test can SIGKILL it there.

PAUSE_AT selects the point (in the main process; the others wait for it at their next collective):
  iter:N     before training step N (global, 0-based)
  save:K     inside the K-th checkpoint save, after half of the file is written
  cluster:E  at the start of epoch E's clustering
The process creates the file PAUSE_MARKER and sleeps; the test kills it while it sleeps.
"""
import io
import os
import sys
import time

import torch
from fastreid.utils import comm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import train_net  # noqa: E402

from lwtgpf.engine.hooks import ClusterHook  # noqa: E402
from lwtgpf.engine.trainer import Trainer  # noqa: E402


def _pause() -> None:
    with open(os.environ["PAUSE_MARKER"], "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)


def _install(kind: str, n: int) -> None:
    if kind == "iter":
        run_step = Trainer.run_step

        def paused_step(self):
            if self.iter == n and comm.is_main_process():
                _pause()
            run_step(self)

        Trainer.run_step = paused_step
    elif kind == "save":
        real_save, calls = torch.save, []

        def paused_save(obj, f, *args, **kwargs):
            calls.append(1)
            if len(calls) == n:
                buf = io.BytesIO()
                real_save(obj, buf, *args, **kwargs)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                _pause()
            return real_save(obj, f, *args, **kwargs)

        torch.save = paused_save
    elif kind == "cluster":
        before_epoch = ClusterHook.before_epoch

        def paused_clustering(self):
            if self.trainer.epoch == n and not self.trainer.resume.restores(n) and comm.is_main_process():
                _pause()
            before_epoch(self)

        ClusterHook.before_epoch = paused_clustering
    else:
        raise ValueError(f"PAUSE_AT {kind}:{n}: expected iter, save or cluster")


if os.environ.get("PAUSE_AT"):
    _kind, _n = os.environ["PAUSE_AT"].split(":")
    _install(_kind, int(_n))

if __name__ == "__main__":
    train_net.cli()
