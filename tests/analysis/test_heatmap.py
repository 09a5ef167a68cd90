"""Heat maps of every method and backbone: the image's size, not constant, sensitive to occluding the person."""
import numpy as np
import pytest
import torch

from lwtgpf.analysis.cam import SimilarityTarget, class_activation_maps, default_cam_layer
from lwtgpf.analysis.heatmap import heat_maps, heat_share_in_box, heatmap_method, heatmap_panels, overlay
from lwtgpf.analysis.inputs import camera_id, load_batch
from lwtgpf.data.synthetic import generate_synthetic, person_box

from .conftest import BASELINE, TINY_LEWINVIT, TINY_RESNET, TINY_VIT, tiny_model


@pytest.fixture(scope="module")
def synthetic_queries(tmp_path_factory):
    folder = generate_synthetic(tmp_path_factory.mktemp("syn"), num_cameras=3, num_train_ids=2,
                                num_test_ids=3, images_per_id=2)
    return sorted(str(p) for p in (folder / "query").iterdir())[:2]


CASES = {
    "lewinvit-rollout": ([TINY_LEWINVIT], "rollout"),
    "lewinvit-gradcam": ([TINY_LEWINVIT], "gradcam"),
    "lewinvit-eigencam": ([TINY_LEWINVIT], "eigencam"),
    "resnet-gradcam++": ([TINY_RESNET], "gradcam++"),
    "resnet-gradcam": ([TINY_RESNET], "gradcam"),
    "vit-layercam": ([TINY_VIT], "layercam"),
    "baseline-lewinvit-rollout": ([TINY_LEWINVIT, BASELINE, ["MODEL.BACKBONE.FEAT_DIM", "64"]], "rollout"),
    "baseline-lewinvit-gradcam": ([TINY_LEWINVIT, BASELINE, ["MODEL.BACKBONE.FEAT_DIM", "64"]], "gradcam"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_heat_maps_size_contrast_and_occlusion(case, synthetic_queries):
    opts, method = CASES[case]
    cfg, model = tiny_model(*opts)
    if method == "rollout":
        # At initialisation (weights std .02) attention is nearly uniform in every window, whatever
        # the image; larger query and key weights make it depend on the content, as trained ones do.
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("attn.qkv.weight"):
                    param.mul_(30)
    paths = synthetic_queries
    batch, originals = load_batch(cfg, paths, [camera_id(p) for p in paths])
    assert batch["images"].shape == (2, 3, 64, 32) and originals[0].shape == (128, 64, 3)
    images_before = batch["images"].clone()
    heats = heat_maps(cfg, model, batch, method)
    assert torch.equal(batch["images"], images_before)  # the batch is left as it was
    assert heats.shape == (2, 64, 32) and np.isfinite(heats).all()
    assert heats.min() >= 0 and heats.max() <= 1 and heats.std(axis=(1, 2)).min() > 0.05

    panels = heatmap_panels(heats, originals)
    assert panels[0].shape[0] > 128 and panels[0].shape[1] > 2 * 64  # two images of the original size

    occluded = batch["images"].clone()
    for i, path in enumerate(paths):  # grey over the person's box, in model-input pixels
        x0, y0, x1, y1 = (v / 2 for v in person_box(path))  # stored 128x64 -> input 64x32
        occluded[i, :, int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = 128.0
    after = heat_maps(cfg, model, dict(batch, images=occluded), method)
    assert np.abs(after - heats).mean(axis=(1, 2)).min() > 0.02


def test_heatmap_method_auto():
    cfg, lewin = tiny_model(TINY_LEWINVIT)
    assert heatmap_method(cfg, lewin) == "rollout"
    cfg, resnet = tiny_model(TINY_RESNET)
    assert heatmap_method(cfg, resnet) == "gradcam"
    assert default_cam_layer(resnet) == "backbone.resnet.layer3.1"
    assert default_cam_layer(lewin) == "backbone.layers.2"
    _, vit = tiny_model(TINY_VIT)
    assert default_cam_layer(vit) == "backbone.blocks.1"


def test_pair_target_and_errors(images):
    cfg, model = tiny_model(TINY_LEWINVIT)
    pair = {"images": images["images"][:1].flip(-1), "camids": images["camids"][:1]}
    own = class_activation_maps(model, images, "gradcam")
    paired = class_activation_maps(model, images, "gradcam", reference=pair)
    assert own.shape == paired.shape == (2, 64, 32) and np.abs(own - paired).max() > 0.05
    with pytest.raises(ValueError, match="pair"):
        heat_maps(cfg, model, images, "rollout", reference=pair)
    with pytest.raises(KeyError, match="no module"):
        class_activation_maps(model, images, "gradcam", layer="backbone.nowhere")
    with pytest.raises(ValueError, match="unknown CAM method"):
        class_activation_maps(model, images, "nocam")


def test_similarity_target_gradient_is_the_reference_direction():
    reference = torch.tensor([3.0, 4.0])
    feature = torch.tensor([1.0, 2.0], requires_grad=True)
    SimilarityTarget(reference)(feature).backward()
    torch.testing.assert_close(feature.grad, torch.tensor([0.6, 0.8]))


def test_share_in_box_and_overlay():
    heat = np.zeros((8, 4))
    heat[2:6, 1:3] = 1.0
    assert heat_share_in_box(heat, (1, 2, 3, 6)) == pytest.approx(1.0)
    assert heat_share_in_box(heat, (1, 2, 2, 6)) == pytest.approx(0.5)
    assert heat_share_in_box(heat, (1.5, 2, 3, 6)) == pytest.approx(0.75)  # half-covered pixels count half
    assert heat_share_in_box(np.ones((8, 4)), (0, 0, 2, 8)) == pytest.approx(0.5)
    image = np.full((8, 4, 3), 100, np.uint8)
    blended = overlay(image, heat)
    assert blended.shape == image.shape and not np.array_equal(blended[3, 1], blended[0, 0])
    with pytest.raises(ValueError, match="differ"):
        overlay(image, heat[:4])


def test_camera_from_name():
    assert camera_id("/x/0012_c3_000001.jpg") == 2
    assert camera_id("/x/person.jpg", camera=4) == 4
    with pytest.raises(ValueError, match="--camera"):
        camera_id("/x/person.jpg")


def test_cam_layer_that_never_runs(images):
    _, model = tiny_model(TINY_RESNET)
    with pytest.raises(RuntimeError, match="never ran"):
        class_activation_maps(model, images, "gradcam", layer="backbone.resnet.layer3")
