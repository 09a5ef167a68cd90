"""tools/visualize.py and tools/export_onnx.py end to end on a tiny synthetic set, weights from a file."""
import importlib.util
import os

import numpy as np
import pytest
import torch
from PIL import Image

from .conftest import REPO

pytestmark = pytest.mark.slow

OPTS = [
    "MODEL.BACKBONE.LEWINVIT.EMBED_DIM", "8", "MODEL.BACKBONE.LEWINVIT.DEPTHS", "[1, 1, 2, 1]",
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
    from lwtgpf.analysis.cli import load_config

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
    path, _ = weights
    export = _tool("export_onnx")
    args = ["--config-file", CONFIG, "--output", str(tmp_path / "m.onnx"), "--batch-size", "3", "MODEL.WEIGHTS", path,
            *OPTS]
    assert export.main(args) == 0
    assert "max abs difference" in capsys.readouterr().out
    assert export.main(["--tolerance", "1e-12"] + args) == 1  # parity is checked, not assumed
    assert "PARITY FAILED" in capsys.readouterr().err
