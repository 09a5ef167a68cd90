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
