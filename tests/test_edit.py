"""Tests for common.edit: smoothing, mouth scaling, pose replacement, resampling, trimming, retargeting."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from common import edit
from common.errors import UserError
from common.geometry import canonical_face, pose6_to_matrix, relative_to_absolute
from common.lmkfile import LandmarkSequence
from tests.conftest import shared_file

ARRAY_KEYS = ("mesh", "pose", "landmarks2d", "blendshapes", "face_found", "reference_mesh", "reference_pose")


def make_seq(
    num_frames: int = 12, seed: int = 0, fps: float = 30.0, optional: bool = True
) -> LandmarkSequence:
    """Canonical face with a talking mouth (frame 0 closed and at rest) under a smooth head motion."""
    rng = np.random.default_rng(seed)
    face = canonical_face().vertices
    mesh = face[None] + rng.normal(0.0, 0.01, (num_frames, 468, 3))
    # Close the canonical mouth in frame 0 and open it by a varying amount in the others.
    gaps = edit.lip_gaps(face)
    opening = np.concatenate([[0.0], rng.uniform(0.2, 1.2, num_frames - 1)])
    upper = mesh[:, edit.UPPER_INNER_LIP, 1]
    mesh[:, edit.LOWER_INNER_LIP, 1] = upper - opening[:, None] * (gaps / gaps.max())[None]
    t = np.arange(num_frames) / fps
    pose = np.column_stack(
        [5 * np.sin(t * 3), 8 * np.sin(t * 2), 2 * np.cos(t), 0.5 * t, -0.3 * t, -30.0 + np.sin(t)]
    )
    kwargs = {}
    if optional:
        blend = rng.uniform(0.05, 0.6, (num_frames, 52))
        blend[0] = 0.01
        blend[:, 0] = 0.9  # "_neutral" is not an activity
        kwargs = {
            "landmarks2d": rng.uniform(0, 256, (num_frames, 478, 2)),
            "blendshapes": blend,
            "face_found": np.arange(num_frames) % 5 != 3,
        }
    return LandmarkSequence(
        mesh=mesh, pose=pose, fps=fps, image_size=(256, 320), meta={"source": "synthetic"}, **kwargs
    )


def assert_same(a: LandmarkSequence, b: LandmarkSequence) -> None:
    for key in ARRAY_KEYS:
        va, vb = getattr(a, key), getattr(b, key)
        assert (va is None) == (vb is None), key
        if va is not None:
            np.testing.assert_array_equal(va, vb, err_msg=key)
    assert a.fps == b.fps and a.image_size == b.image_size


def rotation_angle_deg(pose_a: np.ndarray, pose_b: np.ndarray) -> np.ndarray:
    ra = Rotation.from_euler("xyz", np.asarray(pose_a)[..., :3].reshape(-1, 3), degrees=True)
    rb = Rotation.from_euler("xyz", np.asarray(pose_b)[..., :3].reshape(-1, 3), degrees=True)
    return np.degrees((ra.inv() * rb).magnitude())


# --------------------------------------------------------------------------------------------
# smooth
# --------------------------------------------------------------------------------------------


def test_smooth_k1_is_identity_and_recorded():
    seq = make_seq()
    out = edit.smooth(seq, 1)
    assert_same(out, seq)
    assert out.meta["history"] == ["smooth k=1"] and "history" not in seq.meta
    out.mesh[0, 0, 0] = 123.0
    assert seq.mesh[0, 0, 0] != 123.0  # a copy, not a view


@pytest.mark.parametrize("k", [2, 3, 4, 5, 30])
def test_smooth_constant_stays_constant(k):
    seq = make_seq(8)
    const = LandmarkSequence(
        mesh=np.repeat(seq.mesh[:1], 8, axis=0),
        pose=np.repeat(seq.pose[:1], 8, axis=0),
        fps=30,
        image_size=(256, 256),
        blendshapes=np.repeat(seq.blendshapes[:1], 8, axis=0),
        landmarks2d=np.repeat(seq.landmarks2d[:1], 8, axis=0),
    )
    out = edit.smooth(const, k)
    assert out.num_frames == 8
    for key in ("mesh", "blendshapes", "landmarks2d"):
        np.testing.assert_allclose(getattr(out, key), getattr(const, key), atol=1e-4, err_msg=key)
    np.testing.assert_allclose(out.pose, const.pose, atol=1e-4)


def test_smooth_exact_values_with_truncated_edges():
    seq = make_seq(5, optional=False)
    mesh = np.zeros((5, 468, 3))
    mesh[2, 7, 0] = 3.0
    seq = LandmarkSequence(mesh=mesh, pose=np.zeros((5, 6)), fps=25, image_size=(64, 64))
    out = edit.smooth(seq, 3)
    np.testing.assert_allclose(out.mesh[:, 7, 0], [0.0, 1.0, 1.0, 1.0, 0.0], atol=1e-7)
    # Even window: 2x4 centred average, weights 1/8, 1/4, 1/4, 1/4, 1/8; truncated at the ends.
    out = edit.smooth(seq, 4)
    np.testing.assert_allclose(
        out.mesh[:, 7, 0], [0.375 / 0.625, 0.75 / 0.875, 0.75, 0.75 / 0.875, 0.375 / 0.625], rtol=1e-6
    )
    np.testing.assert_allclose(edit.smoothing_kernel(4), [0.125, 0.25, 0.25, 0.25, 0.125])


@pytest.mark.parametrize("k", [2, 3, 4, 7])
def test_smooth_keeps_linear_motion_in_the_interior(k):
    """A centred window (odd or even) does not shift a linear ramp in time."""
    ramp = np.arange(20, dtype=np.float64)
    mesh = np.repeat(canonical_face().vertices[None], 20, axis=0)
    mesh[:, :, 0] += ramp[:, None] * 0.1
    pose = np.zeros((20, 6))
    pose[:, 3] = ramp
    pose[:, 1] = ramp  # small rotations about y: still linear in rotation-vector space
    out = edit.smooth(LandmarkSequence(mesh=mesh, pose=pose, fps=30, image_size=(64, 64)), k)
    inner = slice(k // 2 + 1, 20 - k // 2 - 1)
    np.testing.assert_allclose(out.mesh[inner], mesh[inner], atol=1e-5)
    np.testing.assert_allclose(out.pose[inner], pose[inner], atol=1e-4)


def test_smooth_rotation_across_euler_wrap_around():
    """rx alternating 179 / -179 deg is a 2-degree wobble around 180, not a swing through 0."""
    pose = np.zeros((6, 6))
    pose[:, 0] = [179.0, -179.0] * 3
    pose[:, 5] = -30
    seq = LandmarkSequence(mesh=np.zeros((6, 468, 3)), pose=pose, fps=30, image_size=(64, 64))
    out = edit.smooth(seq, 2)
    target = np.array([[180.0, 0, 0, 0, 0, -30]])
    assert rotation_angle_deg(out.pose[1:-1], np.repeat(target, 4, axis=0)).max() < 1e-3
    naive = pose[:, 0].mean()
    assert abs(naive) < 1  # what averaging the Euler angles would give


def test_smooth_reduces_jitter_and_keeps_other_keys():
    seq = make_seq(40)
    noisy_rot = seq.pose.copy()
    noisy_rot[:, :3] += np.random.default_rng(3).normal(0, 2.0, (40, 3))
    seq = LandmarkSequence(**{**seq.__dict__, "pose": noisy_rot})
    out = edit.smooth(seq, 5)
    jitter = np.abs(np.diff(seq.pose[:, :3], axis=0)).mean()
    assert np.abs(np.diff(out.pose[:, :3], axis=0)).mean() < 0.5 * jitter
    np.testing.assert_array_equal(out.face_found, seq.face_found)
    assert out.landmarks2d is not None and out.blendshapes is not None
    assert out.meta["history"] == ["smooth k=5"] and out.meta["source"] == "synthetic"
    out.validate()


@pytest.mark.parametrize("k", [0, -3, 2.5, True, "5"])
def test_smooth_bad_window(k):
    with pytest.raises(UserError, match="whole number of frames"):
        edit.smooth(make_seq(), k)


# --------------------------------------------------------------------------------------------
# scale_mouth
# --------------------------------------------------------------------------------------------


def test_scale_mouth_one_is_identity():
    seq = make_seq()
    out = edit.scale_mouth(seq, 1.0)
    assert_same(out, seq)
    assert out.meta["history"] == ["scale_mouth s=1"]


@pytest.mark.parametrize("s", [0.0, 0.5, 1.5, 2.0])
def test_scale_mouth_scales_the_opening(s):
    seq = make_seq()
    before = edit.mouth_opening(seq.mesh)
    out = edit.scale_mouth(seq, s)
    np.testing.assert_allclose(edit.mouth_opening(out.mesh), s * before, atol=1e-5)
    np.testing.assert_allclose(edit.lip_gaps(out.mesh), s * edit.lip_gaps(seq.mesh), atol=1e-5)
    assert out.landmarks2d is None and out.blendshapes is None
    assert out.meta["history"][-1] == f"scale_mouth s={s:g} upper_share=0.3"
    out.validate()


def test_scale_mouth_keeps_closed_mouth_lips_and_upper_face():
    seq = make_seq()
    assert edit.mouth_opening(seq.mesh)[0] == pytest.approx(0.0, abs=1e-6)
    out = edit.scale_mouth(seq, 2.0)
    np.testing.assert_allclose(out.mesh[0], seq.mesh[0], atol=1e-6)  # a closed mouth stays closed
    np.testing.assert_array_equal(out.mesh[..., [0, 2]], seq.mesh[..., [0, 2]])  # only y moves
    # Each lip moves as a whole: outer-to-inner contour distance (lip thickness) per column unchanged.
    for outer, inner in [
        (edit.UPPER_OUTER_LIP, edit.UPPER_INNER_LIP),
        (edit.LOWER_OUTER_LIP, edit.LOWER_INNER_LIP),
    ]:
        thickness = seq.mesh[:, outer, 1] - seq.mesh[:, inner, 1]
        np.testing.assert_allclose(out.mesh[:, outer, 1] - out.mesh[:, inner, 1], thickness, atol=1e-5)
    face = canonical_face().vertices
    upper_face = face[:, 1] >= face[edit.SUBNASALE, 1]  # nose, eyes, brows, forehead
    np.testing.assert_array_equal(out.mesh[:, upper_face], seq.mesh[:, upper_face])
    # The chin follows the jaw: it moves down, by less than the lower lip.
    lip_drop = seq.mesh[1:, 14, 1] - out.mesh[1:, 14, 1]
    chin_drop = seq.mesh[1:, 152, 1] - out.mesh[1:, 152, 1]
    assert (chin_drop > 0.5 * lip_drop).all() and (chin_drop <= lip_drop + 1e-6).all()


def test_mouth_basis_is_smooth_and_bounded():
    basis = edit.mouth_basis(0.3)
    assert basis.shape == (9, 468)
    upper, lower, jaw = edit._mouth_fields()
    for field in (*upper, *lower, jaw):
        assert field.min() >= 0.0 and field.max() <= 1.0
    # The lip corners are in between: they move with both lips.
    for corner in (61, 291, 78, 308):
        assert 0.2 < upper[:, corner].sum() < 0.8 and 0.2 < lower[:, corner].sum() < 0.8


@pytest.mark.parametrize("s", [-0.5, float("nan"), float("inf"), "wide"])
def test_scale_mouth_bad_scale(s):
    with pytest.raises(UserError, match="mouth scale"):
        edit.scale_mouth(make_seq(), s)


# --------------------------------------------------------------------------------------------
# set_pose
# --------------------------------------------------------------------------------------------


def test_ping_pong_indices():
    np.testing.assert_array_equal(edit.ping_pong_indices(4, 10), [0, 1, 2, 3, 2, 1, 0, 1, 2, 3])
    np.testing.assert_array_equal(edit.ping_pong_indices(2, 5), [0, 1, 0, 1, 0])
    np.testing.assert_array_equal(edit.ping_pong_indices(1, 3), [0, 0, 0])
    np.testing.assert_array_equal(edit.ping_pong_indices(10, 4), [0, 1, 2, 3])  # longer: cut


def aniportrait_loop(template: np.ndarray, length: int) -> np.ndarray:
    """AniPortrait's audio2vid looping of pose_temp.npy (mirror without the turning frames, tile, cut)."""
    mirrored = np.concatenate((template, template[-2:0:-1]), axis=0)
    return np.tile(mirrored, (length // len(mirrored) + 1, 1))[:length]


def test_set_pose_still():
    seq = make_seq()
    out = edit.set_pose(seq, "still")
    np.testing.assert_array_equal(out.pose, np.repeat(seq.pose[:1], seq.num_frames, axis=0))
    np.testing.assert_array_equal(out.mesh, seq.mesh)
    assert out.landmarks2d is None and out.blendshapes is not None
    assert out.meta["history"] == ["set_pose still (first frame)"]
    given = np.array([1.0, 2.0, 3.0, 0.5, -0.5, -40.0])
    np.testing.assert_allclose(
        edit.set_pose(seq, "still", pose=given).pose, np.tile(given, (seq.num_frames, 1))
    )
    with pytest.raises(UserError, match="6 finite numbers"):
        edit.set_pose(seq, "still", pose=np.zeros(5))


def test_set_pose_template_is_composed_and_looped_like_aniportrait():
    seq = make_seq(25)
    template = np.column_stack(
        [np.linspace(0, 8, 7), np.linspace(0, -5, 7), np.zeros(7), np.linspace(0, 1, 7)]
    )
    template = np.column_stack([template, np.zeros((7, 2))])
    out = edit.set_pose(seq, "template", pose=template)
    expected = relative_to_absolute(aniportrait_loop(template, 25), seq.pose[0])
    np.testing.assert_allclose(out.pose, expected, atol=1e-4)
    assert out.meta["history"] == ["set_pose template array"]
    # A zero template holds the first frame's pose; a longer template is cut.
    zero = edit.set_pose(seq, edit.PoseSource(poses=np.zeros((40, 6)), relative=True))
    np.testing.assert_allclose(zero.pose, np.repeat(seq.pose[:1], 25, axis=0), atol=1e-4)


def test_set_pose_absolute_and_fps_of_the_source():
    seq = make_seq(12)
    absolute = np.zeros((5, 6))
    absolute[:, 3] = np.arange(5)
    absolute[:, 5] = -35
    out = edit.set_pose(seq, "absolute", pose=absolute)
    np.testing.assert_allclose(out.pose[:, 3], [0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 3], atol=1e-6)
    # A 15 fps source on a 30 fps sequence plays at its own speed: two frames per source frame.
    slow = edit.set_pose(seq, edit.PoseSource(poses=absolute, relative=False, fps=15.0))
    np.testing.assert_allclose(slow.pose[:10, 3], [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4], atol=1e-5)
    np.testing.assert_allclose(slow.pose[:, 5], -35, atol=1e-5)


def test_set_pose_bad_mode_and_poses():
    seq = make_seq()
    with pytest.raises(UserError, match="'still', 'template', 'absolute'"):
        edit.set_pose(seq, "wobble")
    with pytest.raises(UserError, match="needs the poses"):
        edit.set_pose(seq, "template")
    with pytest.raises(UserError, match=r"expected finite \(frames, 6\)"):
        edit.set_pose(seq, "absolute", pose=np.zeros((4, 3)))


def test_load_pose_source_files(tmp_path):
    good = tmp_path / "template.npy"
    np.save(good, np.zeros((9, 6)))
    source = edit.load_pose_source(good)
    assert source.relative and source.fps is None and source.poses.shape == (9, 6)
    assert source.origin == str(good)

    lmk = tmp_path / "other.npz"
    make_seq(6, fps=25).save(lmk)
    source = edit.load_pose_source(lmk)
    assert not source.relative and source.fps == 25 and source.poses.shape == (6, 6)

    for name, array in [
        ("cols.npy", np.zeros((9, 5))),
        ("flat.npy", np.zeros(6)),
        ("text.npy", np.array(["a"] * 6)),
    ]:
        np.save(tmp_path / name, array)
        with pytest.raises(
            UserError, match=rf"{name}: pose template has shape .* expected a numeric \(frames, 6\)"
        ):
            edit.load_pose_source(tmp_path / name)
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((3, 6), np.nan))
    with pytest.raises(UserError, match=r"nan\.npy: pose template contains NaN"):
        edit.load_pose_source(nan)
    with pytest.raises(UserError, match="no such pose file"):
        edit.load_pose_source(tmp_path / "missing.npy")
    (tmp_path / "pose.txt").write_text("0 0 0 0 0 0")
    with pytest.raises(UserError, match=r"pose.txt: a pose file is a \.npy template"):
        edit.load_pose_source(tmp_path / "pose.txt")
    (tmp_path / "broken.npy").write_bytes(b"not numpy")
    with pytest.raises(UserError, match=r"broken\.npy: not a readable \.npy"):
        edit.load_pose_source(tmp_path / "broken.npy")


def test_aniportrait_pose_template_from_shared():
    path = shared_file("aniportrait", "pose_temp.npy")
    source = edit.load_pose_source(path)
    assert source.relative and source.poses.shape == (165, 6)
    seq = make_seq(400)
    out = edit.set_pose(seq, source)
    expected = relative_to_absolute(aniportrait_loop(np.load(path), 400), seq.pose[0])
    assert rotation_angle_deg(out.pose, expected).max() < 1e-3
    np.testing.assert_allclose(out.pose[:, 3:], expected[:, 3:], atol=1e-4)


# --------------------------------------------------------------------------------------------
# resample_fps
# --------------------------------------------------------------------------------------------


def test_resample_same_fps_is_identity():
    seq = make_seq()
    out = edit.resample_fps(seq, 30)
    assert_same(out, seq)
    assert out.meta["history"] == ["resample_fps 30"]


def test_resample_30_15_30():
    seq = make_seq(60)
    half = edit.resample_fps(seq, 15)
    assert half.num_frames == 30 and half.fps == 15
    np.testing.assert_allclose(half.mesh, seq.mesh[::2], atol=1e-6)  # frame j at time j/15 = frame 2j
    assert rotation_angle_deg(half.pose, seq.pose[::2]).max() < 1e-3
    np.testing.assert_allclose(half.pose[:, 3:], seq.pose[::2, 3:], atol=1e-5)
    np.testing.assert_array_equal(half.face_found, seq.face_found[::2])
    back = edit.resample_fps(half, 30)
    assert back.num_frames == 60 and back.fps == 30
    np.testing.assert_allclose(back.mesh[::2], seq.mesh[::2], atol=1e-6)
    np.testing.assert_allclose(
        back.blendshapes[1:-1:2], 0.5 * (half.blendshapes[:-1] + half.blendshapes[1:]), atol=1e-6
    )
    assert back.meta["history"] == ["resample_fps 30 -> 15", "resample_fps 15 -> 30"]
    back.validate()


def test_resample_frame_counts_and_nearest_face_found():
    seq = make_seq(10)
    assert edit.resample_fps(seq, 25).num_frames == 8  # round(10 / 30 * 25 = 8.33)
    assert edit.resample_fps(seq, 45).num_frames == 15
    assert edit.resample_fps(seq.select(slice(0, 1)), 1).num_frames == 1  # at least one frame
    out = edit.resample_fps(seq, 60)
    np.testing.assert_array_equal(
        out.face_found, seq.face_found[np.minimum(np.floor(np.arange(20) / 2 + 0.5), 9).astype(int)]
    )


def test_resample_rotations_by_slerp_across_wrap_around():
    pose = np.array([[0.0, 0.0, 170.0, 0.0, 0.0, -30.0], [0.0, 0.0, -170.0, 2.0, 0.0, -30.0]])
    seq = LandmarkSequence(mesh=np.zeros((2, 468, 3)), pose=pose, fps=10, image_size=(64, 64))
    out = edit.resample_fps(seq, 20)
    assert out.num_frames == 4
    assert rotation_angle_deg(out.pose[1], [0, 0, 180.0]).max() < 1e-3  # through 180, not through 0
    assert out.pose[1, 3] == pytest.approx(1.0)


@pytest.mark.parametrize("fps", [0, -5, float("nan"), float("inf"), None])
def test_resample_bad_fps(fps):
    with pytest.raises(UserError, match="frame rate"):
        edit.resample_fps(make_seq(), fps)


# --------------------------------------------------------------------------------------------
# trim
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (":", (0, 90)),
        ("1:2", (30, 60)),
        ("30f:", (30, 90)),
        (":45f", (0, 45)),
        ("0.5:1.5", (15, 45)),
        ("  10f : 2.0 ", (10, 60)),
        (":3", (0, 90)),
        ("0.01:", (0, 90)),
        ("2.9:", (87, 90)),
    ],
)
def test_parse_trim(text, expected):
    assert edit.parse_trim(text, make_seq(90, optional=False)) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("-1:", "negative; give times from the start"),
        (":-5f", "negative"),
        ("2:1", "empty; the end must come after the start"),
        ("5:", r"start frame 150 is past the end; the sequence has 90 frames \(3.000 s at 30 fps\)"),
        (":100f", "end frame 100 is past the end.*end at 90f at most, or leave the end empty"),
        ("abc:", "neither seconds"),
        ("1", "write START:END"),
        ("1:2:3", "write START:END"),
        ("1.5f:", "neither seconds"),
    ],
)
def test_parse_trim_errors(text, match):
    with pytest.raises(UserError, match=match):
        edit.parse_trim(text, make_seq(90, optional=False))


def test_trim_frames():
    seq = make_seq(20)
    out = edit.trim(seq, 5, 12)
    assert out.num_frames == 7
    np.testing.assert_array_equal(out.mesh, seq.mesh[5:12])
    np.testing.assert_array_equal(out.face_found, seq.face_found[5:12])
    np.testing.assert_array_equal(out.landmarks2d, seq.landmarks2d[5:12])
    assert out.meta["history"] == ["trim frames 5:12"]
    assert edit.trim(seq).num_frames == 20 and edit.trim(seq, end=3).num_frames == 3
    assert edit.trim(seq, *edit.parse_trim("10f:", seq)).num_frames == 10
    for start, end in [(5, 5), (-1, 4), (0, 21), (25, None)]:
        with pytest.raises(UserError, match="trim"):
            edit.trim(seq, start, end)


# --------------------------------------------------------------------------------------------
# retarget
# --------------------------------------------------------------------------------------------


def test_neutral_frame():
    seq = make_seq(15)
    assert edit.neutral_frame(seq) == 0  # closed mouth, lowest blendshape activity
    rest = make_seq(15, optional=False)
    assert edit.neutral_frame(rest) == 0  # closed mouth, near the median shape
    # With blendshapes, the least active frame wins when mouths are alike.
    blend = seq.blendshapes.copy()
    blend[0] = 0.5
    blend[7] = 0.0
    mesh = seq.mesh.copy()
    mesh[7] = mesh[0]
    moved = LandmarkSequence(mesh=mesh, pose=seq.pose, fps=30, image_size=(64, 64), blendshapes=blend)
    assert edit.neutral_frame(moved) == 7


def test_retarget_onto_own_first_frame_reproduces_source():
    seq = make_seq(20)
    reference = seq.select(slice(0, 1))
    out = edit.retarget(seq, reference)
    np.testing.assert_allclose(out.mesh, seq.mesh, atol=1e-5)
    np.testing.assert_allclose(pose6_to_matrix(out.pose), pose6_to_matrix(seq.pose), atol=1e-5)
    np.testing.assert_array_equal(out.reference_mesh, seq.mesh[0])
    np.testing.assert_array_equal(out.reference_pose, seq.pose[0])
    assert out.landmarks2d is None
    np.testing.assert_array_equal(out.blendshapes, seq.blendshapes)
    np.testing.assert_array_equal(out.face_found, seq.face_found)
    assert out.meta["history"] == ["retarget onto synthetic (neutral frame 0, scale 1.0000)"]
    out.validate()


def test_retarget_onto_another_face():
    source = make_seq(20, seed=1)
    ref_mesh = canonical_face().vertices * 1.5 + np.array([0.0, 0.3, 0.0])
    ref_pose = np.array([[10.0, -20.0, 5.0, 1.0, -2.0, -50.0]])
    reference = LandmarkSequence(mesh=ref_mesh[None], pose=ref_pose, fps=1, image_size=(600, 400))
    out = edit.retarget(source, reference, neutral=3)
    scale = edit.inter_ocular_distance(ref_mesh) / edit.inter_ocular_distance(
        source.mesh[3].astype(np.float64)
    )
    np.testing.assert_allclose(out.mesh, ref_mesh[None] + scale * (source.mesh - source.mesh[3]), atol=1e-4)
    np.testing.assert_allclose(out.mesh[3], ref_mesh, atol=1e-5)
    # The reference pose at the neutral frame, and the source's motion relative to it afterwards.
    mats, src = pose6_to_matrix(out.pose), pose6_to_matrix(source.pose)
    np.testing.assert_allclose(mats[3], pose6_to_matrix(ref_pose)[0], atol=1e-5)
    np.testing.assert_allclose(
        np.linalg.inv(mats[3])[None] @ mats, np.linalg.inv(src[3])[None] @ src, atol=1e-4
    )
    assert out.fps == source.fps and out.image_size == (600, 400)
    np.testing.assert_allclose(out.reference_mesh, ref_mesh, atol=1e-6)
    with pytest.raises(UserError, match="neutral frame 20 is outside"):
        edit.retarget(source, reference, neutral=20)


# --------------------------------------------------------------------------------------------
# a real clip
# --------------------------------------------------------------------------------------------


def real_sequence(face_model, num_frames: int = 36) -> LandmarkSequence:
    """The first frames of a real talking-head clip through MediaPipe and the geometry pipeline."""
    import cv2
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    from common.geometry import landmarks_to_geometry

    capture = cv2.VideoCapture(str(shared_file("talking", "Obama_clip1.mp4")))
    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(face_model)),
        running_mode=vision.RunningMode.VIDEO,
        output_face_blendshapes=True,
    )
    landmarks, blendshapes = [], []
    with vision.FaceLandmarker.create_from_options(options) as landmarker:
        for i in range(num_frames):
            ok, bgr = capture.read()
            assert ok, "could not read the test clip"
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            result = landmarker.detect_for_video(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb), i * 33)
            landmarks.append([(p.x, p.y, p.z) for p in result.face_landmarks[0]])
            blendshapes.append([c.score for c in result.face_blendshapes[0]])
    capture.release()
    lm = np.array(landmarks)
    size = rgb.shape[:2]
    geometry = landmarks_to_geometry(lm, size)
    return LandmarkSequence(
        mesh=geometry.mesh,
        pose=geometry.pose,
        fps=30,
        image_size=size,
        landmarks2d=lm[:, :, :2] * np.array([size[1], size[0]]),
        blendshapes=np.array(blendshapes),
        meta={"source": "Obama_clip1.mp4"},
    )


def test_edits_on_a_real_clip(face_model):
    seq = real_sequence(face_model)
    opening = edit.mouth_opening(seq.mesh)
    iod = edit.inter_ocular_distance(seq.mesh)
    assert 5.0 < iod.mean() < 7.5  # cm, an adult face
    assert opening.max() > 0.3  # he is talking
    wide = edit.scale_mouth(seq, 1.5)
    moving = opening > 0
    np.testing.assert_allclose(edit.mouth_opening(wide.mesh)[moving], 1.5 * opening[moving], atol=1e-4)
    for out in (
        wide,
        edit.smooth(seq, 5),
        edit.resample_fps(seq, 25),
        edit.set_pose(seq, "still"),
        edit.trim(seq, *edit.parse_trim("0.2:1", seq)),
        edit.retarget(seq, seq.select(slice(10, 11))),
    ):
        out.validate()
        points = out.project()
        assert np.isfinite(points).all()
        # The face stays in the picture.
        assert (points.min(axis=(0, 1)) > 0).all() and (points.max(axis=(0, 1)) < 256).all()
    # Smoothing a real clip moves the landmarks by well under a pixel on average.
    shift = np.linalg.norm(edit.smooth(seq, 3).project() - seq.project(), axis=-1).mean()
    assert shift < 1.0
