import subprocess
import sys


def test_fastreid_imports_after_lwtgpf():
    # A fresh interpreter: nothing imported fastreid before lwtgpf did.
    code = "import lwtgpf, fastreid.data, fastreid.engine, fastreid.evaluation, fastreid.modeling"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_fastreid_import_fails_without_compat():
    # Guards against the fix becoming dead code: without lwtgpf first, fastreid.data breaks.
    result = subprocess.run([sys.executable, "-c", "import fastreid.data"], capture_output=True, text=True)
    assert result.returncode != 0 and ("torch._six" in result.stderr or "Mapping" in result.stderr)


def test_faiss_and_torch_load_together_in_either_order():
    # faiss-gpu brings CUDA 12 libraries, torch CUDA 13 ones: both must load and compute side by side.
    check = ("import numpy as np; x = np.random.default_rng(0).standard_normal((500, 16)).astype('float32'); "
             "index = faiss.IndexFlatIP(16); index.add(x); found = index.search(x, 5)[1]; "
             "t = torch.from_numpy(x); assert (found == (t @ t.T).topk(5).indices.numpy()).all(); "
             "assert faiss.get_num_gpus() >= 0; print('ok')")
    for imports in ("import faiss, torch", "import torch, faiss"):
        result = subprocess.run([sys.executable, "-c", f"{imports}; {check}"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
