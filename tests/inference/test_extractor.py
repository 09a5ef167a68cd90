"""FeatureExtractor: the evaluator's features for the same images, every input kind, cameras, backends, errors."""
import os

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import lwtgpf
from lwtgpf.data.io import UnreadableImageError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs/LWTGPF/synthetic.yml")
OPTS = [
    "MODEL.BACKBONE.PRETRAIN", "False", "MODEL.BACKBONE.LEWINVIT.EMBED_DIM", "8",
    "MODEL.BACKBONE.LEWINVIT.DEPTHS", "[1, 1, 1, 1]", "MODEL.BACKBONE.LEWINVIT.NUM_HEADS", "[1, 2, 2, 2]",
    "MODEL.BACKBONE.NUM_CAMERAS", "3", "DATASETS.SYNTHETIC.NUM_CAMERAS", "3", "DATASETS.SYNTHETIC.NUM_TRAIN_IDS", "2",
    "DATASETS.SYNTHETIC.NUM_TEST_IDS", "4", "DATASETS.SYNTHETIC.IMAGES_PER_ID", "2", "DATALOADER.NUM_WORKERS", "0",
    "INPUT.SIZE_TRAIN", "[64, 32]", "INPUT.SIZE_TEST", "[64, 32]", "MODEL.BACKBONE.LEWINVIT.WINDOW_SIZE", "2",
    "TEST.IMS_PER_BATCH", "5", "MODEL.HEADS.PART_GRANULARITIES", "[1, 2]",
]
# the evaluation's extras: grey-world balance, flipped images, global and part features
EVAL_EXTRAS = ["INPUT.GRAY_WORLD", "True", "TEST.FLIP.ENABLED", "True", "MODEL.HEADS.EVAL_FEAT", "global_parts"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny model's checkpoint (random BNNeck statistics), the synthetic set under a fresh data root."""
    from fastreid.modeling.meta_arch import build_model
    from lwtgpf.cli import load_config

    root = tmp_path_factory.mktemp("data")
    saved = os.environ.get("FASTREID_DATASETS")
    os.environ["FASTREID_DATASETS"] = str(root)
    torch.manual_seed(0)
    model = build_model(load_config(CONFIG, OPTS))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = root / "model.pth"
    torch.save({"model": model.state_dict()}, path)
    yield str(path)
    if saved is None:
        del os.environ["FASTREID_DATASETS"]
    else:
        os.environ["FASTREID_DATASETS"] = saved


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    """Six RGB crops of another size than the model's input (so the test transform resizes)."""
    folder = tmp_path_factory.mktemp("crops")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        pixels = rng.integers(0, 256, (50 + 3 * i, 20 + i, 3), dtype=np.uint8)
        path = folder / f"{i:04d}_c{i % 3 + 1}_000000.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


def test_features_equal_the_evaluators(weights):
    """The evaluation's features, L2-normalised, for the test set's own images and cameras."""
    from fastreid.evaluation import inference_on_dataset

    from lwtgpf.analysis.retrieval import build_eval_model
    from lwtgpf.cli import load_config
    from lwtgpf.data.build import build_test_loader, load_test_items
    from lwtgpf.evaluation.evaluator import ReidEvaluator

    cfg = load_config(CONFIG, OPTS + EVAL_EXTRAS + ["MODEL.WEIGHTS", weights])
    loader, num_query = build_test_loader(cfg, "SyntheticReID")
    evaluator = ReidEvaluator(cfg, num_query)
    inference_on_dataset(build_eval_model(cfg), loader, evaluator, flip_test=True)
    expected = F.normalize(torch.cat([p["feats"] for p in evaluator._predictions]), dim=1).numpy()
    query, gallery = load_test_items(cfg, "SyntheticReID")
    paths, cams = [item[0] for item in query + gallery], [item[2] for item in query + gallery]

    extractor = lwtgpf.FeatureExtractor(CONFIG, weights, opts=OPTS + EVAL_EXTRAS, batch_size=4)
    features = extractor(paths, cams)
    assert features.dtype == np.float32 and features.shape == expected.shape == (len(paths), extractor.feature_dim)
    assert extractor.feature_dim == 8 * 8 * (1 + 3)  # stage-4 width, global + 1 + 2 parts
    np.testing.assert_allclose(features, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1, atol=1e-6)
    assert extractor.meta["dim"] == extractor.feature_dim and extractor.meta["flip"]


def test_every_input_kind_gives_the_same_features(weights, crops):
    extractor = lwtgpf.FeatureExtractor(CONFIG, weights, opts=OPTS, batch_size=4)
    expected = extractor(crops, camids=1)
    rgb = [np.array(Image.open(p).convert("RGB")) for p in crops]
    bgr = [cv2.imread(p) for p in crops]  # OpenCV's channel order
    same_size = np.stack([cv2.resize(a, (20, 50)) for a in rgb])  # a 4-D batch, one size
    kinds = {
        "PIL": [Image.open(p) for p in crops],
        "numpy RGB": rgb,
        "tensor uint8": [torch.from_numpy(a).permute(2, 0, 1) for a in rgb],
        "tensor float 0-255": [torch.from_numpy(a).permute(2, 0, 1).float() for a in rgb],
    }
    for kind, images in kinds.items():
        np.testing.assert_array_equal(extractor(images, camids=1), expected, err_msg=kind)
    np.testing.assert_array_equal(extractor(bgr, camids=1, channel_order="bgr"), expected)
    assert np.abs(extractor(bgr, camids=1) - expected).max() > 1e-3  # the flag matters
    one_by_one = np.concatenate([extractor(Image.fromarray(a), camids=1) for a in same_size])
    np.testing.assert_allclose(extractor(same_size, camids=1), one_by_one, rtol=0, atol=1e-6)
    batch = torch.from_numpy(same_size).permute(0, 3, 1, 2)
    np.testing.assert_allclose(extractor(batch, camids=1), one_by_one, rtol=0, atol=1e-6)


def test_cameras(weights, crops):
    """None means unknown (-1, the mean camera embedding); known and unknown mix within a batch."""
    extractor = lwtgpf.FeatureExtractor(CONFIG, weights, opts=OPTS, batch_size=4)
    unknown = extractor(crops)
    np.testing.assert_array_equal(unknown, extractor(crops, [-1] * len(crops)))
    mixed = extractor(crops, [0, -1, 2, -1, 1, 0])
    for i, cam in enumerate([0, -1, 2, -1, 1, 0]):
        np.testing.assert_allclose(mixed[i], extractor(crops[i], cam)[0], rtol=0, atol=1e-6)
    assert np.abs(extractor(crops, 0) - unknown).max() > 1e-3
    with pytest.raises(ValueError, match=r"camera id 3 \(image 2\) out of range.*NUM_CAMERAS = 3"):
        extractor(crops, [0, 1, 3, 0, 0, 0])
    with pytest.raises(ValueError, match="2 camera ids for 6 images"):
        extractor(crops, [0, 1])


def test_bad_inputs_are_named(weights, crops, tmp_path):
    extractor = lwtgpf.FeatureExtractor(CONFIG, weights, opts=OPTS)
    missing = str(tmp_path / "missing.jpg")
    with pytest.raises(UnreadableImageError, match="missing.jpg"):
        extractor([crops[0], missing])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(UnreadableImageError, match="broken.jpg"):
        extractor([str(broken)])
    with pytest.raises(ValueError, match=r"image 1: a numpy array must be H x W x 3 uint8 \(BGR\), got shape \(8, 4\)"):
        extractor([np.zeros((8, 4, 3), np.uint8), np.zeros((8, 4), np.uint8)], channel_order="bgr")
    with pytest.raises(ValueError, match="float32"):
        extractor(np.zeros((8, 4, 3), np.float32))
    with pytest.raises(ValueError, match="0-255"):
        extractor(torch.full((3, 8, 4), 300.0))
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        extractor(torch.zeros(8, 4, 3, dtype=torch.uint8))
    with pytest.raises(TypeError, match="got int"):
        extractor([3])
    with pytest.raises(ValueError, match="channel_order"):
        extractor(crops, channel_order="bgra")
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        lwtgpf.FeatureExtractor(CONFIG, str(tmp_path / "nowhere.pth"), opts=OPTS)


@pytest.mark.slow
def test_onnxruntime_gives_the_same_features(weights, crops, tmp_path):
    """Within 1e-4 of torch, unknown cameras and flipping included, from the .pth or from an .onnx file."""
    opts = OPTS + ["TEST.FLIP.ENABLED", "True"]
    torch_features = lwtgpf.FeatureExtractor(CONFIG, weights, opts=opts, batch_size=4)
    cams = [0, -1, 2, -1, 1, 0]
    expected = torch_features(crops, cams)
    ort = lwtgpf.FeatureExtractor(CONFIG, weights, backend="onnxruntime", opts=opts, batch_size=4)
    np.testing.assert_allclose(ort(crops, cams), expected, rtol=0, atol=1e-4)

    from lwtgpf.analysis.export import export_onnx
    from lwtgpf.analysis.retrieval import build_eval_model
    from lwtgpf.cli import load_config

    graph = str(tmp_path / "model.onnx")
    export_onnx(build_eval_model(load_config(CONFIG, opts + ["MODEL.WEIGHTS", weights])), graph, (64, 32))
    from_file = lwtgpf.FeatureExtractor(CONFIG, graph, backend="onnxruntime", opts=opts)
    np.testing.assert_allclose(from_file(crops, cams), expected, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="backend='onnxruntime'"):
        lwtgpf.FeatureExtractor(CONFIG, graph, opts=opts)
    with pytest.raises(ValueError, match="takes 64x32 images but the config's INPUT.SIZE_TEST is 128x64"):
        lwtgpf.FeatureExtractor(CONFIG, graph, backend="onnxruntime",
                                opts=opts + ["INPUT.SIZE_TRAIN", "[128, 64]", "INPUT.SIZE_TEST", "[128, 64]"])
