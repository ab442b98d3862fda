"""Structure post-processing: ONE implementation (``EvalMuseStructureProcessor.post_process_distortion``)
for the pipeline and the library (threshold, region labelling, the mask resize, regions at the
original size), and every labelling backend (OpenCV, SciPy, the torch fallback that remote code runs
without them) giving identical results."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

from evalmuse_models.models.evalmuse_structure import (
    EvalMuseStructureConfig,
    EvalMuseStructureModel,
    EvalMuseStructureOutput,
    EvalMuseStructureProcessor,
)
from evalmuse_models.models.evalmuse_structure import post_processing_evalmuse_structure as post
from evalmuse_models.models.evalmuse_structure import postprocess as pp
from evalmuse_models.models.evalmuse_structure.post_processing_evalmuse_structure import label_regions

torch.set_num_threads(1)

BACKENDS = [b for b in post.LABEL_BACKENDS if b == "torch" or post._optional_module(b) is not None]
PROCESSOR = EvalMuseStructureProcessor.from_model_config(EvalMuseStructureConfig.from_preset("tiny"))
# original image sizes (width, height): equal, up on both axes, down on both, mixed, odd ratios
SIZES = [(512, 512), (1024, 1024), (768, 512), (640, 960), (300, 200), (1000, 300), (513, 777), (90, 1500)]


def smooth_heatmaps(n: int, grid: int, seed: int = 0) -> torch.Tensor:
    """``(n, 512, 512)`` heatmaps in [0, 1]: random ``grid`` x ``grid`` noise upsampled bilinearly,
    like a decoder's output (blobs, holes, thin bridges)."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, grid, grid, generator=generator)
    return torch.nn.functional.interpolate(low, size=(512, 512), mode="bilinear", align_corners=False)[:, 0]


def post_process(heatmaps, threshold: float = 40 / 255, min_area: int = 158, sizes=None, backend: str = "auto"):
    """``post_process_distortion`` of ``(n, 512, 512)`` (or one ``(512, 512)``) heatmaps at the original
    image sizes ``sizes`` (``(width, height)`` each, PIL's order)."""
    heat = torch.as_tensor(heatmaps)
    heat = heat[None] if heat.dim() == 2 else heat
    outputs = EvalMuseStructureOutput(heatmap=heat, structure_score=torch.full((len(heat),), 3.0))
    target_sizes = None if sizes is None else [(height, width) for width, height in sizes]
    return PROCESSOR.post_process_distortion(outputs, threshold, target_sizes, min_area, backend=backend)


def reference_regions(mask: np.ndarray) -> list[dict]:
    """The 8-connected regions of ``mask`` by a plain flood fill, in raster order of first pixel."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    regions = []
    for y, x in zip(*np.nonzero(mask), strict=True):
        if seen[y, x]:
            continue
        stack, pixels = [(y, x)], []
        seen[y, x] = True
        while stack:
            cy, cx = stack.pop()
            pixels.append((cy, cx))
            for ny in range(max(cy - 1, 0), min(cy + 2, h)):
                for nx in range(max(cx - 1, 0), min(cx + 2, w)):
                    if mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
        ys, xs = np.array(pixels).T
        regions.append({"bbox": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1], "area": len(pixels)})
    return regions


# ------------------------------------------------------------------------------------------ pipeline == library


def test_predict_equals_postprocess_of_its_heatmap():
    """The pipeline's masks and regions are exactly the post-processing of the heatmap it returns,
    and the library's masks equal its ``mask_512`` (they used to differ: a torch ``nearest-exact``
    resize in predict, OpenCV's ``INTER_NEAREST`` in the library, and regions labelled at 512 in one
    and at the image's size in the other)."""
    torch.manual_seed(0)
    model = EvalMuseStructureModel(EvalMuseStructureConfig.from_preset("tiny")).eval()
    pipe = pipeline("t2i-structure", model=model, processor=PROCESSOR, device="cpu")
    rng = np.random.default_rng(0)
    sizes = [(300, 200), (777, 555), (1000, 640), (512, 512), (64, 64), (130, 900)]
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    heat = pipe(images[0], threshold=0.0)["heatmap"]
    # an untrained heatmap sits near 0.5: threshold at its median level so the masks hold regions
    threshold = float(np.median(np.round(heat * 255))) / 255
    results = pipe(images, batch_size=4, threshold=threshold)
    n_regions = 0
    min_area = model.config.min_region_area
    for result, size in zip(results, sizes, strict=True):
        expected = post_process(result["heatmap"], threshold=threshold, min_area=min_area, sizes=[size])[0]
        assert np.array_equal(result["mask_512"], expected.mask_512)
        assert np.array_equal(result["mask"], expected.mask), size
        assert result["regions"] == expected.regions, size
        assert result["mask"].shape == (size[1], size[0]) and result["mask"].dtype == np.uint8
        assert np.array_equal(result["mask"], post.resize_mask(result["mask_512"], size))
        library = pp.remove_small_regions(pp.heatmap_to_mask(result["heatmap"], threshold), min_area)
        assert np.array_equal(result["mask_512"], library)
        n_regions += len(result["regions"])
    assert n_regions >= len(sizes)  # the comparison saw regions, not only empty masks


def opencv_regions(mask: np.ndarray) -> list[dict]:
    """The 8-connected regions of ``mask`` straight from OpenCV, sorted by first pixel."""
    import cv2

    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    flat = labels.ravel()
    first = np.full(n, flat.size)
    np.minimum.at(first, flat, np.arange(flat.size))
    return [
        {"bbox": [int(x), int(y), int(x + w), int(y + h)], "area": int(a)}
        for k in sorted(range(1, n), key=lambda k: first[k])
        for x, y, w, h, a in [stats[k, :5]]
    ]


def test_regions_are_the_components_of_the_returned_mask():
    heat = smooth_heatmaps(1, 12, seed=3)[0]
    for size in SIZES:
        out = post_process(heat, threshold=0.5, min_area=158, sizes=[size])[0]
        assert out.regions == opencv_regions(out.mask), size
        assert out.regions == post.mask_to_regions(out.mask)


# ------------------------------------------------------------------------------------------ backends


@pytest.mark.parametrize("grid", [4, 16, 64])
def test_label_backends_agree(grid):
    """OpenCV, SciPy and torch give the same masks, regions and order, at every original size."""
    heatmaps = smooth_heatmaps(len(SIZES), grid, seed=grid)
    outputs = {
        backend: post_process(heatmaps, 0.5, 158 if grid < 64 else 20, sizes=SIZES, backend=backend)
        for backend in BACKENDS
    }
    reference = outputs[BACKENDS[0]]
    for backend in BACKENDS[1:]:
        for want, got, size in zip(reference, outputs[backend], SIZES, strict=True):
            assert np.array_equal(want.mask_512, got.mask_512), (backend, size)
            assert np.array_equal(want.mask, got.mask), (backend, size)
            assert want.regions == got.regions, (backend, size)
    assert any(len(r.regions) > 1 for r in reference)


def test_label_backends_agree_on_hard_shapes():
    """Shapes that are slow or tricky for propagation labelling: a spiral, a comb, isolated
    pixels, diagonal-only contacts, empty and full masks."""
    spiral = np.zeros((128, 128), np.uint8)
    top, left, bottom, right = 0, 0, 127, 127
    while top < bottom and left < right:
        spiral[top, left : right + 1] = 1
        spiral[top : bottom + 1, right] = 1
        spiral[bottom, left : right + 1] = 1
        spiral[top + 2 : bottom + 1, left] = 1
        top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
        spiral[top, left - 2 : left + 1] = 1
    comb = np.zeros((128, 128), np.uint8)
    comb[:, ::2] = 1
    comb[-1] = 1
    dots = np.zeros((128, 128), np.uint8)
    dots[::2, ::2] = 1
    diagonal = np.eye(128, dtype=np.uint8) | np.eye(128, k=5, dtype=np.uint8)[::-1]
    masks = [spiral, comb, dots, diagonal, np.zeros((128, 128), np.uint8), np.ones((128, 128), np.uint8)]
    for mask in masks:
        expected = reference_regions(mask)
        for backend in BACKENDS:
            assert post.mask_to_regions(mask, backend=backend) == expected, backend
            labels, areas = label_regions(torch.from_numpy(mask), backend=backend)
            assert areas.tolist() == [r["area"] for r in expected]
            assert labels.max() == len(expected)
            assert np.array_equal(post.remove_small_regions(mask, 3, backend=backend),
                                  post.remove_small_regions(mask, 3, backend=BACKENDS[0]))
    # the torch labelling of a batch equals one mask at a time
    batch = torch.from_numpy(np.stack(masks))
    batch_labels, batch_areas = label_regions(batch, min_area=2, backend="torch")
    for i, mask in enumerate(masks):
        labels, areas = label_regions(torch.from_numpy(mask), min_area=2, backend="torch")
        assert torch.equal(batch_labels[i], labels) and torch.equal(batch_areas[i], areas)


def test_backend_choice():
    assert post.label_backend("auto") == BACKENDS[0]
    assert post.label_backend("torch") == "torch"
    with pytest.raises(ValueError, match="backend"):
        post.label_backend("skimage")


# ------------------------------------------------------------------------------------------ the pieces


def test_threshold_rule_is_one_comparison():
    """``binarize_heatmap`` compares against a precomputed cutoff; it equals the baseline's rule
    ``round(h * 255) > t * 255`` on every value, at the boundary floats too."""
    rng = np.random.default_rng(0)
    values = rng.random(20_000, dtype=np.float32)
    for threshold in [*(k / 255 for k in range(256)), 0.353, 0.1234567, 1e-9, 0.99999]:
        cutoff = np.float32(post._heatmap_cutoff(threshold))
        around = [cutoff]
        for direction in (np.float32(-np.inf), np.float32(np.inf)):
            value = cutoff
            for _ in range(3):
                value = np.nextafter(value, direction)
                around.append(value)
        edges = np.array([*around, 0, 1, -1, np.inf, np.nan], np.float32)
        x = torch.from_numpy(np.concatenate([values, edges]))
        rule = (torch.round(x * 255) > threshold * 255 + 1e-6).to(torch.uint8)
        assert torch.equal(post.binarize_heatmap(x, threshold), rule), threshold
    with pytest.raises(ValueError, match="threshold"):
        post.binarize_heatmap(torch.zeros(2), 1.5)


def test_one_resize_rule():
    """Output pixel i takes input pixel floor((i + 0.5) * in / out) on each axis (pixel centres
    aligned, as torch's nearest-exact and PIL's NEAREST); OpenCV does it only for the sizes where it
    picks exactly those pixels, so the result never depends on it."""
    rng = np.random.default_rng(1)
    mask = (rng.random((512, 512)) > 0.5).astype(np.uint8)
    for width, height in [*SIZES, (1, 1), (3, 7), (2048, 2048), (1234, 4321)]:
        rows = (2 * np.arange(height) + 1) * 512 // (2 * height)
        cols = (2 * np.arange(width) + 1) * 512 // (2 * width)
        resized = post.resize_mask(mask, (width, height))
        assert np.array_equal(resized, mask[rows][:, cols]), (width, height)
        torch_resized = torch.nn.functional.interpolate(
            torch.from_numpy(mask)[None, None].float(), size=(height, width), mode="nearest-exact"
        )[0, 0].to(torch.uint8)
        assert np.array_equal(resized, torch_resized.numpy()), (width, height)
    # every output width up to 1100 along one axis, whichever path does it
    row = mask[:2]
    for width in range(1, 1101):
        cols = (2 * np.arange(width) + 1) * 512 // (2 * width)
        assert np.array_equal(post.resize_mask(row, (width, 2)), row[:, cols]), width
        assert np.array_equal(post.resize_mask(row.T, (2, width)), row.T[cols]), width
    assert post.resize_mask(np.eye(2), (4, 4)).tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    with pytest.raises(ValueError, match="size"):
        post.resize_mask(np.eye(2), (0, 4))


def test_areas_at_the_original_size_count_repeated_pixels():
    """Upscaled regions: boxes mapped to the new grid, areas counting every output pixel a mask
    pixel became (also when several regions share rows and columns)."""
    heat = np.zeros((512, 512), np.float32)
    heat[10:60, 10:40] = 0.9
    heat[30:200, 45:47] = 0.9  # a thin bar next to the first box
    heat[300:301, 0:512] = 0.9  # a full-width line
    for size in [(1000, 777), (512, 1600), (2048, 515)]:
        out = post_process(heat, threshold=0.5, min_area=1, sizes=[size])[0]
        assert out.regions == opencv_regions(out.mask)
        assert sum(r["area"] for r in out.regions) == int(out.mask.sum())
        assert len(out.regions) == 3
    # nested rings: their boxes overlap and cover more than the mask (the one-count path)
    rings = np.zeros((512, 512), np.float32)
    for i, r in enumerate(range(250, 10, -20)):  # squares drawn from the outside in, on and off
        rings[256 - r : 256 + r, 256 - r : 256 + r] = 0.9 if i % 2 == 0 else 0.0
    for size in [(1000, 777), (700, 700)]:
        out = post_process(rings, threshold=0.5, min_area=1, sizes=[size])[0]
        assert len(out.regions) > 3
        assert out.regions == opencv_regions(out.mask)


def test_small_regions_removed_on_the_512_grid():
    heat = np.zeros((512, 512), np.float32)
    heat[100:200, 50:150] = 0.9
    heat[300:305, 300:305] = 0.9  # 25 px
    heat[400:402, 10:100] = 0.9  # 180 px, a long thin box
    for min_area, expected in [(158, 10_180), (200, 10_000), (1, 10_205), (20_000, 0)]:
        out = post_process(heat, min_area=min_area)[0]
        assert int(out.mask_512.sum()) == expected
        assert np.array_equal(out.mask_512, pp.remove_small_regions(pp.heatmap_to_mask(heat), min_area))
    # many small regions (cleared through a lookup table rather than box by box)
    heat = np.zeros((512, 512), np.float32)
    heat[::4, ::4] = 0.9
    heat[102:198, 50:150] = 0.9  # no dot touches it
    expected = np.zeros((512, 512), np.uint8)
    expected[102:198, 50:150] = 1
    out = post_process(heat, min_area=158)[0]
    assert np.array_equal(out.mask_512, expected)
    assert [r["bbox"] for r in out.regions] == [[50, 102, 150, 198]]
