"""Clicks as local thresholds (tumorfm.interactive.local): every click is honoured, reaches no
further than it should, and a positive click selects its object."""

import numpy as np

from tumorfm.interactive.local import refine
from tumorfm.interactive.prompts import Box, Point

SHAPE = (20, 60, 60)


def _ball(centre, radius, shape=SHAPE):
    grid = np.indices(shape)
    return np.linalg.norm(grid - np.reshape(centre, (3, 1, 1, 1)), axis=0) <= radius


def _probability():
    """A confident tumour (0.9) with a doubtful rim (0.4) and, far off, a false alarm (0.8)."""
    p = np.full(SHAPE, 0.05, np.float32)
    p[_ball((10, 30, 30), 9)] = 0.4
    p[_ball((10, 30, 30), 6)] = 0.9
    p[_ball((10, 8, 52), 3)] = 0.8
    return p


def test_no_prompt_is_the_networks_mask():
    p = _probability()
    assert np.array_equal(refine(p, []), p >= 0.5)


def test_a_positive_click_on_a_doubtful_voxel_takes_what_is_as_likely():
    p = _probability()
    mask = refine(p, [Point((10, 30, 38))])  # on the 0.4 rim
    assert mask[10, 30, 38] and (mask == _ball((10, 30, 30), 9)).all()  # rim and core: the object
    assert not mask[10, 8, 52]  # the false alarm is not the object pointed at


def test_a_negative_click_removes_the_doubtful_part_only_and_stops_midway():
    p = _probability()
    p[_ball((10, 30, 30), 9) & ~_ball((10, 30, 30), 6)] = 0.6  # the rim now over 0.5
    first = Point((10, 30, 30))
    mask = refine(p, [first, Point((10, 30, 38), positive=False)])
    assert not mask[10, 30, 38] and mask[_ball((10, 30, 30), 6)].all()  # core kept
    assert mask[10, 30, 22]  # the rim beyond the core: nearer the positive click, kept
    assert not mask[10, 8, 52]


def test_a_click_where_the_network_sees_nothing_adds_a_ball_and_reach_is_bounded():
    p = np.full(SHAPE, 0.0, np.float32)
    mask = refine(p, [Point((10, 30, 30))], spacing_zyx=(3.0, 1.0, 1.0))
    assert mask[10, 30, 30] and 0 < mask.sum() < _ball((10, 30, 30), 5).sum()
    p[:] = 0.3  # a flat field: the click's threshold (0.2) is back at 0.5 at its reach, so it
    for reach in (60.0, 12.0):  # meets 0.3 a third of the way there
        mask = refine(p, [Point((10, 30, 30))], spacing_zyx=(1.0, 1.0, 1.0), margin=0.1,
                      reach_mm=reach)  # fmt: skip
        far = np.linalg.norm(np.argwhere(mask) - [10, 30, 30], axis=1).max()
        assert mask[10, 30, 30] and reach / 3 - 1 <= far <= reach / 3


def test_a_negative_click_on_a_confident_false_alarm_keeps_the_surer_tumour_it_touches():
    """The threshold slides back to 0.5 with the distance: the whole false alarm goes, the
    tumour it touches (surer still) stays, as one flat threshold out to the reach did not."""
    p = np.full(SHAPE, 0.0, np.float32)
    p[_ball((10, 30, 28), 9)] = 1.0
    alarm = _ball((10, 30, 41), 4) & (p < 1)
    p[alarm] = 0.9
    mask = refine(p, [Point((10, 30, 42), positive=False)], margin=0.1, reach_mm=60.0)
    assert not mask[alarm].any() and mask[_ball((10, 30, 28), 9)].all()


def test_a_positive_click_inside_a_box_adds_to_the_boxed_object():
    """A box has chosen the object: a click on a part the network missed adds that part and
    does not make it the only object left."""
    p = _probability()
    p[p < 0.1] = 0.0  # the network sees nothing at the click: it adds its own ball
    mask = refine(p, [Point((10, 30, 45))], [Box((0, 15, 15), (20, 50, 50))])
    assert mask[10, 30, 45] and mask[_ball((10, 30, 30), 6)].all()


def test_boxes_keep_the_inside_and_negative_boxes_erase_it():
    p = _probability()
    mask = refine(p, [], [Box((0, 20, 20), (20, 40, 40))])
    assert mask[10, 30, 30] and not mask[10, 8, 52]
    mask = refine(p, [], [Box((0, 0, 45), (20, 20, 60), positive=False)])
    assert mask[10, 30, 30] and not mask[10, 8, 52]


def test_a_box_keeps_its_inscribed_ellipsoid_not_its_corners():
    """A tumour fills its box as the inscribed ellipsoid does: a network sure of the whole box
    keeps the ellipsoid (faded to 0 at box_fade times its radii) and loses the corners."""
    p = np.full(SHAPE, 0.9, np.float32)
    box = Box((0, 10, 20), (20, 50, 40))  # half-widths 10, 20, 10 voxels around (10, 30, 30)
    mask = refine(p, [], [box], box_fade=1.4)
    assert mask[10, 30, 30] and mask[10, 49, 30] and mask[0, 30, 30]  # the faces' centres
    assert not mask[0, 10, 20] and not mask[19, 49, 39]  # the corners (radius 1.7)
    inside = np.zeros(SHAPE, bool)
    inside[0:20, 10:50, 20:40] = True
    assert not mask[~inside].any() and 0.5 < mask.sum() / inside.sum() < 0.9
    assert np.array_equal(refine(p, [], [box], box_fade=0), inside)  # 0: no fade


def test_a_box_fade_at_or_below_one_or_not_finite_is_refused():
    import pytest

    for fade in (1.0, 0.5, -2.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=f"box fade {fade}: must be a finite number above 1"):
            refine(np.zeros(SHAPE, np.float32), [], [Box((0, 0, 0), (5, 5, 5))], box_fade=fade)
