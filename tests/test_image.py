import numpy as np
import pytest
from PIL import Image

from nuwa_export.errors import NuwaError
from nuwa_export.image import ImageConfig, load_image, padded_geometry, preprocess


def _picture(w, h, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [(320, 240), (240, 320), (224, 224), (97, 301)])
def test_matches_transformers_llava_processor(size):
    from transformers.models.llava.image_processing_pil_llava import (
        LlavaImageProcessorPil,
    )

    cfg = ImageConfig(size=224)
    hf = LlavaImageProcessorPil(
        do_pad=True, size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
        image_mean=list(cfg.mean), image_std=list(cfg.std), resample=3,
    )
    image = _picture(*size)
    want = hf(images=image, return_tensors="np")["pixel_values"][0]
    got = preprocess(image, cfg)
    assert got.shape == (3, 224, 224) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_padding_uses_the_mean_colour_and_centres():
    cfg = ImageConfig(size=224)
    got = preprocess(Image.new("RGB", (200, 100), (255, 255, 255)), cfg)
    mean_pixel = (np.array([int(m * 255) for m in cfg.mean]) / 255 - np.array(cfg.mean)) / np.array(cfg.std)
    np.testing.assert_allclose(got[:, 2, 112], mean_pixel, atol=1e-5)  # top band is padding
    assert padded_geometry(200, 100, cfg) == (200, 0, 50)


def test_load_image_errors(tmp_path):
    with pytest.raises(NuwaError, match="not found"):
        load_image(tmp_path / "missing.png")
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    with pytest.raises(NuwaError, match="cannot read"):
        load_image(bad)
