"""TensorBoard: rank lists and heat maps put in the event storage; the projector embedding on disk."""
import numpy as np
import torch
from fastreid.utils.events import EventStorage
from PIL import Image

from lwtgpf.analysis.tensorboard import EmbeddingProjector, put_eval_pictures
from lwtgpf.evaluation.evaluator import Ranking

from .conftest import TINY_LEWINVIT, tiny_model


def _images(folder, count):
    paths = []
    for i in range(count):
        paths.append(str(folder / f"{i % 3:04d}_c{i % 2 + 1}_{i:03d}.png"))
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def test_eval_pictures(tmp_path):
    cfg, model = tiny_model(TINY_LEWINVIT, ["ANALYSIS.TB_RANKLISTS", "2", "ANALYSIS.TB_HEATMAPS", "2",
                                            "ANALYSIS.TOPK", "3"])
    paths = _images(tmp_path, 8)
    pids, cams = np.arange(8) % 3, np.arange(8) % 2
    dist = np.random.default_rng(0).random((2, 6)).astype(np.float32)
    ranking = Ranking(dist, pids[:2], pids[2:], cams[:2], cams[2:], paths[:2], paths[2:],
                      np.array([0.5, 1.0]), np.array([0.5, 1.0]))
    model.train()
    with EventStorage(0) as storage:
        put_eval_pictures(cfg, model, "Tiny", ranking, storage)
        names = [name for name, image, _ in storage._vis_data]
        shapes = [image.shape for _, image, _ in storage._vis_data]
    assert names == ["Tiny/ranklist_0", "Tiny/ranklist_1", "Tiny/heatmaps_rollout"]
    assert all(s[0] == 3 and s[1] > 64 for s in shapes)
    assert model.training  # put back in the mode it was in


def test_embedding_projector(tmp_path):
    paths = _images(tmp_path, 10)
    projector = EmbeddingProjector(str(tmp_path / "tb"), paths, np.arange(10) % 2, [f"p{i % 3}" for i in range(10)],
                                   samples=6, seed=1)
    features = torch.randn(10, 4)
    labels = np.array([0, 0, 1, 1, -1, 2, 2, -1, 0, 1])
    projector.write(3, features, labels)
    step = tmp_path / "tb" / "00003" / "train_features"
    rows = (step / "metadata.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["pseudo label", "camera", "identity"]
    expected = [[str(labels[i]), str(i % 2), f"p{i % 3}"] for i in projector.index]
    assert [r.split("\t") for r in rows[1:]] == expected
    written = np.loadtxt(step / "tensors.tsv", delimiter="\t")
    np.testing.assert_allclose(written, features[projector.index].numpy(), rtol=1e-5)
    assert (step / "sprite.png").is_file() and "train_features" in (tmp_path / "tb" / "projector_config.pbtxt").read_text()
