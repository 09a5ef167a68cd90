"""The launcher leaves no process group behind: gloo's threads alive at interpreter exit can abort a
process that finished its work (SIGABRT, "terminate called without an active exception")."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = '''
import atexit
import sys

import torch
import torch.distributed as dist

import lwtgpf  # noqa: F401
from lwtgpf.engine.launch import launch


def work(out):
    total = torch.ones(1)
    dist.all_reduce(total)
    assert total.item() == 2
    # a spawned process runs atexit handlers when it finishes: what does it hold then?
    atexit.register(lambda rank=dist.get_rank(): open(f"{out}/exit{rank}", "w").write(str(dist.is_initialized())))


if __name__ == "__main__":
    launch(work, 2, use_cuda=False, args=(sys.argv[1],))
'''


def test_two_processes_destroy_their_group_before_exit(tmp_path):
    script = tmp_path / "two.py"
    script.write_text(SCRIPT)
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [(tmp_path / f"exit{rank}").read_text() for rank in range(2)] == ["False", "False"]
