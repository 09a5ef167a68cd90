"""tools/visualize.py and tools/export_onnx.py end to end on a tiny synthetic set, weights from a file."""
import importlib.util
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from .conftest import REPO

pytestmark = pytest.mark.slow

OPTS = [
    "MODEL.BACKBONE.PRETRAIN", "False", "MODEL.BACKBONE.LEWINVIT.EMBED_DIM", "8", "MODEL.BACKBONE.LEWINVIT.DEPTHS", "[1, 1, 2, 1]",
    "MODEL.BACKBONE.LEWINVIT.NUM_HEADS", "[1, 2, 2, 2]", "DATASETS.SYNTHETIC.NUM_CAMERAS", "3",
    "MODEL.BACKBONE.NUM_CAMERAS", "3", "DATASETS.SYNTHETIC.NUM_TRAIN_IDS", "2", "DATASETS.SYNTHETIC.NUM_TEST_IDS", "4",
    "DATASETS.SYNTHETIC.IMAGES_PER_ID", "2", "DATALOADER.NUM_WORKERS", "0",
]
CONFIG = str(REPO / "configs/LWTGPF/synthetic.yml")


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A checkpoint of the tiny model the tools build, and the synthetic set under a fresh data root."""
    from fastreid.modeling.meta_arch import build_model
    from lwtgpf.cli import load_config

    root = tmp_path_factory.mktemp("data")
    saved = os.environ.get("FASTREID_DATASETS")
    os.environ["FASTREID_DATASETS"] = str(root)  # read whenever a dataset is built
    torch.manual_seed(0)
    model = build_model(load_config(CONFIG, OPTS))
    path = root / "model.pth"
    torch.save({"model": model.state_dict()}, path)
    yield str(path), root
    if saved is None:
        del os.environ["FASTREID_DATASETS"]
    else:
        os.environ["FASTREID_DATASETS"] = saved


def test_heatmap_tool(weights, tmp_path):
    path, root = weights
    visualize = _tool("visualize")
    visualize.main(["heatmap", "--config-file", CONFIG, "--output", str(tmp_path / "a"), "--num-images", "2",
                    "MODEL.WEIGHTS", path, *OPTS])
    written = sorted((tmp_path / "a").glob("*_rollout.png"))
    assert len(written) == 2
    picture = np.asarray(Image.open(written[0]))
    assert picture.shape[0] > 128 and picture.std() > 0
    query = sorted(root.glob("SyntheticReID/*/query/*.jpg"))
    visualize.main(["heatmap", "--config-file", CONFIG, "--output", str(tmp_path / "b"), "--method", "gradcam",
                    "--images", str(query[0]), str(query[1]), "--pair", str(query[2]), "MODEL.WEIGHTS", path, *OPTS])
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted(f"{q.stem}_gradcam.png" for q in query[:2])


def test_ranklist_tool(weights, tmp_path):
    path, _ = weights
    _tool("visualize").main(["ranklist", "--config-file", CONFIG, "--output", str(tmp_path), "--num-queries", "3",
                             "--topk", "4", "--sort", "worst", "MODEL.WEIGHTS", path, "TEST.RERANK.ENABLED", "True",
                             *OPTS])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "cmc.png" in names and "roc.png" in names and sum(n.endswith("_ranklist.png") for n in names) == 3


def test_export_tool(weights, tmp_path, capsys):
    from lwtgpf.analysis.export import onnx_session, run_session
    from lwtgpf.analysis.retrieval import RetrievalModel, build_eval_model
    from lwtgpf.cli import load_config

    path, _ = weights
    export = _tool("export_onnx")
    onnx_file = tmp_path / "m.onnx"
    args = ["--config-file", CONFIG, "--output", str(onnx_file), "--batch-size", "3", "MODEL.WEIGHTS", path, *OPTS]
    assert export.main(args) == 0
    reported = re.search(r"max abs difference (\S+) \(tolerance 0\.0001\)", capsys.readouterr().out)
    assert reported and float(reported.group(1)) <= 1e-4
    # the file computes the checkpoint's features, whatever the tool's own check compares
    cfg = load_config(CONFIG, OPTS + ["MODEL.WEIGHTS", path])
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(5, 3, *cfg.INPUT.SIZE_TEST, generator=generator) * 255
    camids = torch.randint(0, 3, (5,), generator=generator)
    with torch.no_grad():
        expected = RetrievalModel(build_eval_model(cfg))(images, camids).numpy()
    np.testing.assert_allclose(run_session(onnx_session(str(onnx_file)), images, camids), expected, rtol=0, atol=1e-4)
    assert export.main(["--tolerance", "1e-12"] + args) == 1  # parity is checked, not assumed
    assert "PARITY FAILED" in capsys.readouterr().err


def test_training_writes_pictures_and_embeddings(tmp_path):
    """tools/train_net.py: rank lists and heat maps in TensorBoard at the evaluation, and the
    projector embedding of the training features at each clustering (CLUSTER.EMBEDDING_PERIOD 1)."""
    import subprocess
    import sys

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    opts = OPTS + ["MODEL.DEVICE", "cpu", "INPUT.SIZE_TRAIN", "[96,32]", "INPUT.SIZE_TEST", "[96,32]",
                   "DATASETS.SYNTHETIC.NUM_TRAIN_IDS", "12", "DATASETS.SYNTHETIC.IMAGES_PER_ID", "8",
                   "CLUSTER.EPS", "0.7", "CLUSTER.MIN_SAMPLES", "2", "CLUSTER.K1", "6", "CLUSTER.K2", "2",
                   "MODEL.MEMORY.NEG_K", "5", "SOLVER.IMS_PER_BATCH", "8", "SOLVER.ITERS_PER_EPOCH", "2",
                   "SOLVER.MAX_EPOCH", "2", "SOLVER.WARMUP_EPOCHS", "1", "SOLVER.STEPS", "[1]", "TEST.EVAL_PERIOD", "2",
                   "CLUSTER.EMBEDDING_PERIOD", "1", "CLUSTER.EMBEDDING_SAMPLES", "20", "ANALYSIS.TB_RANKLISTS", "2",
                   "ANALYSIS.TB_HEATMAPS", "2", "MODEL.BACKBONE.LEWINVIT.WINDOW_SIZE", "3", "OUTPUT_DIR", str(out)]
    env = dict(os.environ, FASTREID_DATASETS=str(tmp_path / "data"))
    result = subprocess.run([sys.executable, str(REPO / "tools/train_net.py"), "--config-file", CONFIG, *opts],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    events = EventAccumulator(str(out), size_guidance={"images": 0})
    events.Reload()
    assert sorted(events.Tags()["images"]) == ["SyntheticReID/heatmaps_rollout", "SyntheticReID/ranklist_0",
                                               "SyntheticReID/ranklist_1"]
    for epoch in (0, 1):
        rows = (out / f"{epoch:05d}" / "train_features" / "metadata.tsv").read_text().splitlines()
        assert rows[0] == "pseudo label\tcamera\tidentity" and len(rows) == 21
