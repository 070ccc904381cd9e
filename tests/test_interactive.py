"""Promptable refinement (issue 19): prompt channels, the simulated reader, the Session."""

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import CASES, PROMPT_PATCH, ct_bundle

from tumorfm.data.io import Geometry
from tumorfm.data.orient import Orientation
from tumorfm.errors import TumorFMError
from tumorfm.interactive import (
    PROMPT_CHANNELS,
    AutomaticSession,
    Box,
    Point,
    Session,
    corrective_click,
    encode,
    first_prompt,
    from_world,
    simulate_clicks,
)

CT = CASES / "totalseg_example_ct_sm.nii.gz"  # 30 x 101 x 122 voxels of 3 mm
SAGITTAL = [2, 0, 1]  # sitk.PermuteAxes order: the same patient space, stored sagittally


def _ball(shape, centre, radius):
    return np.linalg.norm(np.indices(shape) - np.reshape(centre, (3, 1, 1, 1)), axis=0) <= radius


def test_encode_draws_balls_and_boxes_where_asked():
    spacing, radius = (2.0, 1.0, 1.0), 4.0
    points = [Point((10, 15, 20)), Point((3.4, 5.6, 30.2), positive=False)]
    boxes = [Box((2, 3, 4), (5, 9, 12)), Box((5.2, 0, 0), (5.4, 2, 3), positive=False)]
    channels = encode((20, 30, 40), points, boxes, None, spacing, radius)
    assert channels.shape == (len(PROMPT_CHANNELS), 20, 30, 40) and channels.dtype == np.float32
    assert not channels[0].any()  # no previous mask
    ball = (4 / 3) * math.pi * radius**3 / np.prod(spacing)  # 134 voxels
    assert channels[1].sum() == pytest.approx(ball, rel=0.15)
    assert channels[1][10, 15, 20] == 1 and channels[1][10, 15, 25] == 0  # 5 mm off: outside
    assert channels[1][12, 15, 20] == 1 and channels[1][13, 15, 20] == 0  # 4 mm, 6 mm along z
    assert channels[2].sum() == pytest.approx(ball, rel=0.15) and channels[2][3, 6, 30] == 1
    expected = np.zeros((20, 30, 40), np.float32)
    expected[2:5, 3:9, 4:12] = 1
    assert np.array_equal(channels[3], expected)  # half-open, exactly
    thin = np.zeros_like(expected)
    thin[5, 0:2, 0:3] = 1  # thinner than a voxel on z: the voxel holding its middle
    assert np.array_equal(channels[4], thin)
    previous = np.random.default_rng(0).random((20, 30, 40))
    assert np.array_equal(encode((20, 30, 40), previous=previous)[0], previous >= 0.5)
    tiny = encode((9, 9, 9), [Point((4, 4, 4))], radius_mm=0.1)[1]
    assert tiny.sum() == 1 and tiny[4, 4, 4] == 1  # the clicked voxel is always on


def test_encoding_a_region_equals_the_crop_of_the_volume():
    rng = np.random.default_rng(1)
    shape, spacing = (24, 40, 36), (3.27, 1.93, 1.93)
    points = [Point(rng.uniform(0, 24, 3) * [1, 1.6, 1.5], bool(i % 2)) for i in range(12)]
    boxes = []
    for i in range(6):
        lo = rng.uniform(0, 20, 3)
        boxes.append(Box(lo, lo + rng.uniform(0.3, 15, 3), bool(i % 2)))
    previous = rng.random(shape) > 0.7
    full = encode(shape, points, boxes, previous, spacing)
    assert full[1:].any(axis=(1, 2, 3)).all()
    regions = [((3, 5, 7), (10, 12, 14)), ((0, 0, 0), (5, 40, 36)), ((20, 30, 30), (4, 10, 6))]
    for origin, size in regions:
        region = tuple(slice(o, o + s) for o, s in zip(origin, size))
        part = encode(size, points, boxes, previous[region], spacing, origin_zyx=origin)
        assert np.array_equal(part, full[(slice(None), *region)])


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: Point((3, 400, 20)).check((47, 134, 136)),
         "point (3, 400, 20): outside the scan (size 47 x 134 x 136)"),
        (lambda: Point((-1, 2, 3), positive=False).check((47, 134, 136)),
         "negative point (-1, 2, 3): outside the scan"),
        (lambda: Point((1, float("nan"), 3)), "point (1, nan, 3): coordinates must be finite"),
        (lambda: Point((1, 2)), "point (1, 2): expected three numbers"),
        (lambda: Box((2, 30, 4), (8, 10, 9)),
         "box (2, 30, 4)-(8, 10, 9): corners swapped on axis y"),
        (lambda: Box((2, 3, 4), (8, 10, 4)), "box (2, 3, 4)-(8, 10, 4): zero size on axis x"),
        (lambda: Box((0, 0, 0), (2, 2, math.inf)), "box corner (2, 2, inf): coordinates must be"),
        (lambda: Box((0, 0, 0), (48, 2, 2), False).check((47, 134, 136)),
         "negative box (0, 0, 0)-(48, 2, 2): outside the scan"),
    ],
)  # fmt: skip
def test_bad_prompts_are_one_line_errors_naming_the_prompt(make, message):
    with pytest.raises(TumorFMError) as error:
        make()
    assert message in str(error.value) and "\n" not in str(error.value)


def test_world_coordinates_map_through_the_geometry():
    image = sitk.ReadImage(str(CT))  # directions flipped on x and y (LPS)
    geometry = Geometry.of(sitk.PermuteAxes(image, SAGITTAL))
    stored = sitk.PermuteAxes(image, SAGITTAL)
    voxels = [(3, 7, 11), (20.0, 100.5, 90.0)]  # x, y, z of the ITK image
    world = [stored.TransformContinuousIndexToPhysicalPoint(v) for v in voxels]
    for zyx, v in zip(from_world(world, geometry), voxels):
        assert zyx == pytest.approx(tuple(reversed(v)), abs=1e-6)
    outside = stored.TransformContinuousIndexToPhysicalPoint((0, -3, 0))
    with pytest.raises(TumorFMError, match=r"world point \(.*\) mm: outside the scan") as error:
        from_world([world[0], outside], geometry)
    assert "\n" not in str(error.value)
    with pytest.raises(TumorFMError, match="finite"):
        from_world([(1.0, float("nan"), 2.0)], geometry)


def test_corrective_click_goes_to_the_centre_of_the_largest_error():
    target = np.zeros((32, 32, 32), bool)
    target[10:30, 10:30, 10:30] = True
    prediction = target.copy()
    prediction[10:30, 10:30, 10:17] = False  # a missed slab of 2800 voxels
    prediction[0:6, 0:6, 0:6] = True  # a false alarm of 216 voxels in the corner
    click = corrective_click(prediction, target)
    assert click.positive and click.zyx[2] == 13 and {click.zyx[0], click.zyx[1]} <= {19, 20}
    prediction[10:30, 10:30, 10:17] = True
    prediction[12, 12, 12] = False  # now the false alarm is the larger
    click = corrective_click(prediction, target)
    assert not click.positive and click.zyx == (2, 2, 2)  # the volume's border is a boundary
    assert corrective_click(target, target) is None
    # spacing counts: a cube of 6 voxels under a slab of 3 slices x 12 x 12 voxels; deepest in
    # voxels is the cube, in millimetres (10 mm slices) the slab
    region = np.zeros((20, 30, 30), bool)
    region[2:8, 2:8, 2:8] = region[8:11, 2:14, 2:14] = True
    assert corrective_click(np.zeros_like(region), region).zyx[0] < 8
    assert corrective_click(np.zeros_like(region), region, (10.0, 1.0, 1.0)).zyx == (9, 7, 7)


def test_first_prompt_is_inside_deterministic_and_can_be_nothing():
    target = _ball((30, 40, 40), (15, 20, 18), 9)
    for seed in range(5):
        (point,), boxes = first_prompt(target, np.random.default_rng(seed), ("point",))
        assert not boxes and point.positive and target[point.voxel]
        assert np.linalg.norm(np.subtract(point.zyx, (15, 20, 18))) <= 9 / 2 + 1
        points, (box,) = first_prompt(target, np.random.default_rng(seed), ["box"])
        assert not points and box.positive and box.check(target.shape)
        exact = (6, 11, 9), (25, 30, 28)
        assert np.all(np.abs(np.subtract(box.lo_zyx, exact[0])) <= 3)
        assert np.all(np.abs(np.subtract(box.hi_zyx, exact[1])) <= 3)
    first = first_prompt(target, np.random.default_rng(7))
    assert first == first_prompt(target, np.random.default_rng(7))
    assert first_prompt(target, np.random.default_rng(0), ["none"]) == ([], [])
    assert first_prompt(np.zeros_like(target), np.random.default_rng(0)) == ([], [])
    with pytest.raises(ValueError, match="scribble"):
        first_prompt(target, np.random.default_rng(0), ["scribble"])


def test_simulated_clicks_improve_an_oracle_grower_monotonically():
    """A grower that knows the boundary: each click adds (or removes) the target's voxels
    within 7 voxels of it. Clicks at the wrong place or of the wrong sign would stall it."""
    target = _ball((32, 48, 48), (16, 20, 20), 10) | _ball((32, 48, 48), (16, 32, 34), 7)

    def grow(points, boxes, previous):
        mask = np.zeros(target.shape, bool)
        for box in boxes:
            mask[tuple(slice(int(a), int(b)) for a, b in zip(box.lo_zyx, box.hi_zyx))] = True
        if previous is not None:
            mask |= previous
        for point in points:
            near = _ball(target.shape, point.zyx, 7)
            mask = mask | (near & target) if point.positive else mask & ~(near & ~target)
        return mask

    for first in (["point"], ["box"]):
        scores = simulate_clicks(grow, target, 12, np.random.default_rng(0), first)
        print(first, " ".join(f"{d:.2f}" for d in scores))
        assert len(scores) == 13 and all(b >= a for a, b in zip(scores, scores[1:]))
        assert scores[-1] > scores[0] + 0.3, scores  # a box: many false alarms to click away
        assert scores[-1] > (0.95 if first == ["point"] else 0.8), scores
        assert scores == simulate_clicks(grow, target, 12, np.random.default_rng(0), first)


@pytest.fixture(scope="module")
def promptable(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundle") / "promptable"
    return ct_bundle(folder, 1 + len(PROMPT_CHANNELS), {"prompt_channels": list(PROMPT_CHANNELS)})


def _session(bundle, image: sitk.Image) -> Session:
    session = Session.from_bundle(bundle, device="cpu", precision="fp32")
    session.set_image(sitk.GetArrayFromImage(image), Geometry.of(image))
    return session


def test_a_sagittally_stored_scan_gets_the_same_mask_for_the_same_physical_prompts(promptable):
    axial = sitk.ReadImage(str(CT))
    sagittal = sitk.PermuteAxes(axial, SAGITTAL)
    a, s = _session(promptable, axial), _session(promptable, sagittal)
    axes = Orientation.of(Geometry.of(sagittal)).axes

    def stored(zyx):  # an axial index -> the sagittal scan's index of the same voxel
        out = [0.0] * 3
        for value, axis in zip(zyx, axes):
            out[axis] = value
        return tuple(out)

    clicks = [((15, 50, 60), True), ((12, 40, 70), False), ((20, 70, 30), True)]
    for zyx, positive in clicks:
        world = axial.TransformIndexToPhysicalPoint(tuple(reversed(zyx)))
        (voxel,) = from_world([world], Geometry.of(sagittal))
        assert np.allclose(voxel, stored(zyx), atol=1e-4)
        a.add_point(zyx, positive)
        s.add_point(np.round(voxel), positive)
        print(f"click answered in {s.seconds * 1000:.0f} ms (tsfm-tiny, one {PROMPT_PATCH} window)")
    a.add_box((10, 30, 40), (18, 60, 80), positive=True)
    s.add_box(stored((10, 30, 40)), stored((18, 60, 80)), positive=True)
    assert a.mask.shape == (30, 101, 122) and s.mask.shape == sagittal.GetSize()[::-1]
    assert a.mask.any() and not a.mask.all()
    assert np.array_equal(Orientation.of(Geometry.of(sagittal)).to_axial(s.mask), a.mask)
    assert np.allclose(stored(a.window[0]), s.window[0]) and len(s.points) == 3


def test_index_mapping_round_trips_and_matches_the_resampling(promptable):
    session = _session(promptable, sitk.PermuteAxes(sitk.ReadImage(str(CT)), SAGITTAL))
    index_map, rng = session.index_map, np.random.default_rng(3)
    for zyx in rng.uniform(0, 30, (20, 3)) * [4, 1, 3.3]:
        assert index_map.point_to_scan(index_map.point_to_plan(zyx)) == pytest.approx(zyx)
        lo, hi = index_map.edges_to_plan(zyx, zyx + 5)
        assert np.concatenate(index_map.edges_to_scan(lo, hi)) == pytest.approx([*zyx, *zyx + 5])
    # a ramp on the plan grid brought back by the resampling gives each scan voxel's plan index
    grid = index_map.grid
    ramp = np.indices(grid.shape_after_resampling, np.float32)
    back = np.stack([grid.back(r) for r in ramp])  # on the cropped axial scan
    stored = (50, 60, 15)  # (z, y, x) of the sagittal scan (101 x 122 x 30), interior
    axes = index_map.orientation.axes
    axial = tuple(stored[a] - lo for a, (lo, _) in zip(axes, grid.bbox))
    assert back[(slice(None), *axial)] == pytest.approx(index_map.point_to_plan(stored), abs=1e-3)


def test_a_prompt_changes_the_mask_only_in_its_window(promptable, tmp_path):
    session = _session(promptable, sitk.ReadImage(str(CT)))
    with torch.no_grad():  # "object everywhere": the window's answer is all ones
        session.network.head.weight.zero_()
        session.network.head.bias.fill_(10.0)
    session.add_point((15, 20, 25))
    first = session.mask.copy()
    lo, hi = session.window
    centres = np.indices(first.shape).transpose(1, 2, 3, 0) + 0.5

    def inside(margin):
        return np.all((centres >= np.add(lo, margin)) & (centres < np.subtract(hi, margin)), -1)

    assert first[inside(1)].all() and not first[~inside(-1)].any()
    # the window is one patch of the plan grid (4 x 3 x 3 mm) on the 3 mm scan
    assert np.subtract(hi, lo) == pytest.approx([16 * 4 / 3, 32, 32], abs=0.8)
    session.add_point((15, 80, 100))  # far away: the first window keeps its mask
    assert (session.mask >= first).all() and session.mask.sum() > 1.8 * first.sum()


def test_an_automatic_bundle_answers_once_and_each_click_is_honoured(tmp_path):
    plain = ct_bundle(tmp_path / "plain", 1, {})
    image = sitk.ReadImage(str(CT))
    session = _session(plain, image)
    assert isinstance(session, AutomaticSession) and session.object_class == "tumour"
    own = session.mask.copy()  # before any prompt: the network's own answer
    missed = tuple(np.argwhere(~own)[len(own) // 2])  # a voxel the network left out
    session.add_point(missed)
    assert session.mask[missed] and session.seconds < 1.0  # no forward: local thresholds
    session.add_point(missed, positive=False)  # changed its mind: the same voxel, negative
    assert not session.mask[missed]
    lo, hi = session.window  # a click may change the mask anywhere (it selects its object)
    assert np.allclose(lo, 0) and np.allclose(hi, own.shape, atol=1)
    session.reset()
    assert np.array_equal(session.mask, own) and session.points == []
    session.add_point(missed)
    wide = session.mask.sum()
    session.reset()
    session.reach_mm = 2.0  # the session's settings reach tumorfm.interactive.local.refine
    session.add_point(missed)
    assert session.mask[missed] and session.mask.sum() < wide
    two = ct_bundle(tmp_path / "two", 1, {}, classes=["tumour", "organ"])
    with pytest.raises(TumorFMError, match="predicts tumour, organ; name the object's class"):
        Session.from_bundle(two, device="cpu")
    assert Session.from_bundle(two, device="cpu", object_class="organ").object_class == "organ"


def test_masks_and_prompts_that_are_refused(promptable, tmp_path):
    session = _session(promptable, sitk.ReadImage(str(CT)))
    with pytest.raises(TumorFMError, match="negative point .* needs something to correct"):
        session.add_point((10, 10, 10), positive=False)
    with pytest.raises(TumorFMError, match=r"point \(30, 10, 10\): outside the scan"):
        session.add_point((30, 10, 10))
    with pytest.raises(TumorFMError, match="swapped"):
        session.add_box((10, 10, 10), (12, 5, 12))
    session.add_point((15, 50, 60))
    with pytest.raises(TumorFMError, match="mask of shape"):
        session.set_mask(np.zeros((30, 101, 121), bool))
    assert len(session.points) == 1  # a refused mask leaves the session as it was
    blob = _ball((30, 101, 122), (15, 50, 60), 12)
    session.set_mask(blob)
    assert session.mask.shape == blob.shape
    overlap = 2 * (session.mask & blob).sum() / (session.mask.sum() + blob.sum())
    assert overlap > 0.95  # the plan grid's 4 mm slices blur it a little
    session.add_point((15, 50, 60), positive=False)  # allowed now: there is a mask to correct
    session.reset()
    assert not session.mask.any() and session.points == [] and session.window is None
