"""Tests for the editing controls of issue 13: regions and mix, rotation and pose curves, expression scale, blinks.

Each claim is measured on real landmark sequences: whole shared talking clips, extracted once per session.
"""

from __future__ import annotations

import numpy as np
import pytest

from common import blinks, edit
from common.errors import UserError
from common.geometry import absolute_to_relative, canonical_face
from common.lmk import main as lmk
from common.lmkfile import LandmarkSequence
from common.regions import REGIONS, region_weights
from tests.conftest import shared_file
from tests.test_edit import make_seq, rotation_angle_deg


@pytest.fixture(scope="session")
def clips(face_model) -> dict[str, LandmarkSequence]:
    """Two whole shared clips of different speakers, both with blinks (extracted once)."""
    from common.detect import extract

    return {
        name: extract(shared_file("talking", f"{name}.mp4"), model_path=face_model, progress=False)
        for name in ("KristiNoem", "feifeili_clip3")
    }


def in_no_region() -> np.ndarray:
    return sum(region_weights(r) for r in REGIONS) == 0


def mesh_edges() -> np.ndarray:
    tri = canonical_face().triangles
    return np.unique(
        np.sort(np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]]), axis=1), axis=0
    )


# --------------------------------------------------------------------------------------------
# regions
# --------------------------------------------------------------------------------------------


def test_regions_are_smooth_disjoint_weights_with_full_cores():
    total = sum(region_weights(r) for r in REGIONS)
    assert total.max() <= 1.0 + 1e-12 and min(region_weights(r).min() for r in REGIONS) >= 0.0
    assert (region_weights("mouth")[[13, 14, 0, 17, 61, 291, 152]] == 1).all()  # lips, chin
    assert (region_weights("eyes")[[159, 145, 386, 374, 33, 263]] == 1).all()
    assert (region_weights("brows")[[105, 334, 70, 300]] == 1).all()
    assert (total[[1, 4, 234, 454]] == 0).all()  # nose tip, nose bridge, ears
    # No jump along any mesh edge: a region fades out over several vertices.
    edges = mesh_edges()
    for r in REGIONS:
        w = region_weights(r)
        assert np.abs(w[edges[:, 0]] - w[edges[:, 1]]).max() < 0.6, r
    assert 100 < in_no_region().sum() < 300
    with pytest.raises(ValueError, match="regions"):
        region_weights("ears")


# --------------------------------------------------------------------------------------------
# mix
# --------------------------------------------------------------------------------------------


def retargeted_offsets(source: LandmarkSequence, base: LandmarkSequence, frames: int) -> np.ndarray:
    ns, nb = edit.neutral_frame(source), edit.neutral_frame(base)
    k = edit.inter_ocular_distance(base.mesh[nb].astype(float)) / edit.inter_ocular_distance(
        source.mesh[ns].astype(float)
    )
    src = source.mesh.astype(np.float64)
    return k * (src - src[ns])[edit.ping_pong_indices(source.num_frames, frames)]


def test_mix_takes_each_region_from_its_source_and_leaves_the_rest_of_the_base(clips):
    base, other = clips["KristiNoem"], clips["feifeili_clip3"]
    out = edit.mix(base, mouth=other)
    assert out.num_frames == base.num_frames and out.fps == base.fps and out.image_size == base.image_size
    # Outside every region: the base exactly; in the mouth (weight 1): the base's neutral face plus the source's
    # offsets, scaled to the base face.
    np.testing.assert_array_equal(out.mesh[:, in_no_region()], base.mesh[:, in_no_region()])
    outside_mouth = region_weights("mouth") == 0
    np.testing.assert_allclose(out.mesh[:, outside_mouth], base.mesh[:, outside_mouth], atol=1e-5)
    core = region_weights("mouth") == 1
    expected = base.mesh[edit.neutral_frame(base)][None].astype(float) + retargeted_offsets(
        other, base, base.num_frames
    )
    np.testing.assert_allclose(out.mesh[:, core], expected[:, core], atol=1e-4)
    # The mouth opens as the source's does (scaled), the eyes blink as the base's do.
    ratio = edit.mouth_opening(out.mesh) / np.maximum(edit.mouth_opening(expected), 1e-9)
    assert np.corrcoef(edit.mouth_opening(out.mesh), edit.mouth_opening(expected))[0, 1] > 0.999
    assert np.median(ratio[edit.mouth_opening(expected) > 0.2]) == pytest.approx(1.0, abs=0.02)
    np.testing.assert_allclose(blinks.eye_openness(out.mesh), blinks.eye_openness(base.mesh), atol=1e-5)
    assert out.landmarks2d is None and out.blendshapes is None
    assert "mix mouth from" in out.meta["history"][-1]


def test_mix_eyes_and_brows_and_pose(clips):
    base, other = clips["feifeili_clip3"], clips["KristiNoem"]
    out = edit.mix(base, eyes=other, brows=other, pose=other)
    assert out.num_frames == base.num_frames
    # The mouth is the base's; the eyes open and close with the source's.
    np.testing.assert_allclose(edit.mouth_opening(out.mesh), edit.mouth_opening(base.mesh), atol=1e-5)
    source_eyes = blinks.eye_openness(other.mesh[: base.num_frames])
    assert np.corrcoef(blinks.eye_openness(out.mesh), source_eyes)[0, 1] > 0.95
    # Head motion: the source's relative to its first frame, starting from the base's first pose.
    np.testing.assert_allclose(out.pose[0], base.pose[0], atol=1e-4)
    moved = absolute_to_relative(out.pose.astype(float))
    expected = absolute_to_relative(other.pose[: base.num_frames].astype(float))
    assert rotation_angle_deg(moved, expected).max() < 1e-3
    np.testing.assert_allclose(moved[:, 3:], expected[:, 3:], atol=1e-4)


def test_mix_has_no_seam_at_region_borders(clips):
    """Edge lengths of the mixed face stray from those of its two sources half as far as a hard cut-out's."""
    base, other = clips["KristiNoem"], clips["feifeili_clip3"]
    nb = edit.neutral_frame(base)
    source_face = base.mesh[nb][None].astype(float) + retargeted_offsets(other, base, base.num_frames)
    w = region_weights("mouth")
    smooth = edit.mix(base, mouth=other).mesh.astype(float)
    hard = np.where((w >= 0.5)[None, :, None], source_face, base.mesh)
    edges = mesh_edges()

    def length(mesh: np.ndarray) -> np.ndarray:
        return np.linalg.norm(mesh[:, edges[:, 0]] - mesh[:, edges[:, 1]], axis=-1)

    def excess(mesh: np.ndarray) -> np.ndarray:
        """How far (cm) each edge's length is outside the range of the two sources' lengths."""
        a, b = length(base.mesh.astype(float)), length(source_face)
        return np.maximum(np.maximum(np.minimum(a, b) - length(mesh), length(mesh) - np.maximum(a, b)), 0)

    smooth_excess, hard_excess = excess(smooth), excess(hard)
    assert smooth_excess.max() < 0.5 * hard_excess.max()
    assert np.percentile(smooth_excess, 99.9) < 0.5 * np.percentile(hard_excess, 99.9)
    assert np.percentile(smooth_excess, 99.9) < 0.1  # 1 mm on a face of 15 cm


def test_mix_lengths_and_frame_rates():
    base = make_seq(40, seed=1, optional=False)
    short = make_seq(25, seed=2, optional=False)
    slow = edit.resample_fps(make_seq(60, seed=3, optional=False), 15.0)  # 30 frames at 15 fps = 60 at 30 fps
    assert edit.mix(base, mouth=short).num_frames == 40
    assert edit.mix(base, mouth=short, length="shortest").num_frames == 25
    assert edit.mix(base, mouth=short, eyes=slow, length="loop").num_frames == 60
    looped = edit.mix(base, mouth=short, length="loop")
    assert looped.num_frames == 40  # the base is the longest
    # A shorter source loops ping-pong: frame 25 of the output shows the source's frame 23.
    out = edit.mix(base, mouth=short)
    core = region_weights("mouth") == 1
    neutral = base.mesh[edit.neutral_frame(base)].astype(float)
    offsets = retargeted_offsets(short, base, 40)
    np.testing.assert_allclose(offsets[25], offsets[23])
    np.testing.assert_allclose(out.mesh[25, core], (neutral + offsets[25])[core], atol=1e-5)
    assert edit.mix(base, eyes=slow).fps == 30.0
    with pytest.raises(UserError, match="nothing to mix"):
        edit.mix(base)
    with pytest.raises(UserError, match="shortest"):
        edit.mix(base, mouth=short, length="longest")


# --------------------------------------------------------------------------------------------
# rotate and pose curves
# --------------------------------------------------------------------------------------------


def test_rotate_adds_constant_euler_offsets(clips):
    seq = clips["KristiNoem"]
    out = edit.rotate(seq, yaw=15, pitch=-5, roll=2.5)
    np.testing.assert_allclose(
        out.pose[:, [1, 0, 2]] - seq.pose[:, [1, 0, 2]], [[15, -5, 2.5]] * len(seq), atol=1e-4
    )
    np.testing.assert_array_equal(out.pose[:, 3:], seq.pose[:, 3:])
    np.testing.assert_array_equal(out.mesh, seq.mesh)
    # Positive yaw turns the face towards the image's right: the nose tip moves right.
    assert (out.project()[:, 1, 0] > seq.project()[:, 1, 0]).all()
    assert edit.parse_angles("yaw=15, Pitch=-5") == {"yaw": 15.0, "pitch": -5.0}
    for bad, match in (
        ("yawn=1", "unknown angle"),
        ("yaw=1,yaw=2", "twice"),
        ("yaw=91", "90"),
        ("yaw", "NAME"),
    ):
        with pytest.raises(UserError, match=match):
            edit.parse_angles(bad)


def test_pose_curve_reaches_every_keyframe_and_holds_after_the_last(clips):
    seq = edit.set_pose(clips["KristiNoem"], "still")
    curve = edit.parse_pose_curve("0:yaw=0;2.5:yaw=20,pitch=-10;5:yaw=0")
    out = edit.apply_pose_curve(seq, curve)
    yaw = out.pose[:, 1] - seq.pose[:, 1]
    pitch = out.pose[:, 0] - seq.pose[:, 0]
    for time, value in ((0.0, 0.0), (2.5, 20.0), (5.0, 0.0)):
        assert yaw[round(time * seq.fps)] == pytest.approx(value, abs=0.5)
    assert pitch[round(2.5 * seq.fps)] == pytest.approx(-10.0, abs=0.5)
    assert np.abs(pitch[round(2.5 * seq.fps) :]).max() == pytest.approx(10.0, abs=1e-3)  # held
    assert yaw.max() <= 20.0 + 1e-3 and yaw.min() >= -1e-3  # no overshoot
    assert np.abs(np.diff(yaw)).max() < 1.0  # smooth: at most about 1 degree a frame here
    np.testing.assert_allclose(yaw[round(5 * seq.fps) :], 0.0, atol=1e-4)


def test_pose_curve_csv_equals_inline_and_reports_bad_rows(tmp_path):
    (tmp_path / "curve.csv").write_text("time,yaw,pitch,roll\n0,0,,\n2.5,20,-10,\n5,0,,3\n")
    a = edit.parse_pose_curve(tmp_path / "curve.csv").offsets(np.linspace(0, 6, 50))
    b = edit.parse_pose_curve("0:yaw=0;2.5:yaw=20,pitch=-10;5:yaw=0,roll=3").offsets(np.linspace(0, 6, 50))
    np.testing.assert_allclose(a, b)
    (tmp_path / "bad.csv").write_text("time,yaw\n0,0\n1,2,3\n")
    with pytest.raises(UserError, match=r"bad\.csv row 3"):
        edit.parse_pose_curve(tmp_path / "bad.csv")
    for bad, match in (("1:yaw=0;1:yaw=2", "out of order"), ("-1:yaw=0", ">= 0"), ("", "no keyframes")):
        with pytest.raises(UserError, match=match):
            edit.parse_pose_curve(bad)


# --------------------------------------------------------------------------------------------
# expression scale
# --------------------------------------------------------------------------------------------


def test_expression_scale_scales_eyes_and_brows_and_leaves_the_mouth(clips):
    seq = clips["KristiNoem"]
    n = edit.neutral_frame(seq)
    out = edit.scale_expression(seq, 2.0)
    mouth = region_weights("mouth") == 1
    np.testing.assert_allclose(out.mesh[:, mouth], seq.mesh[:, mouth], atol=1e-5)
    np.testing.assert_allclose(edit.mouth_opening(out.mesh), edit.mouth_opening(seq.mesh), atol=1e-5)
    upper = region_weights("mouth") == 0
    offsets = seq.mesh[:, upper] - seq.mesh[n, upper]
    np.testing.assert_allclose(out.mesh[:, upper] - seq.mesh[n, upper], 2.0 * offsets, atol=1e-4)
    still = edit.scale_expression(seq, 0.0)
    np.testing.assert_allclose(
        still.mesh[:, upper], np.broadcast_to(seq.mesh[n, upper], still.mesh[:, upper].shape), atol=1e-5
    )
    with pytest.raises(UserError, match="expression scale"):
        edit.scale_expression(seq, -1)


# --------------------------------------------------------------------------------------------
# blinks
# --------------------------------------------------------------------------------------------


def test_blink_none_removes_every_blink_and_touches_only_the_eyes(clips):
    seq = clips["KristiNoem"]
    assert len(blinks.detect_blinks(seq.mesh, seq.fps)) >= 4  # she blinks in this clip
    out = edit.blink(seq, "none")
    assert blinks.detect_blinks(out.mesh, out.fps) == []
    openness = blinks.eye_openness(out.mesh)
    assert openness.max() - openness.min() < 1e-5  # held
    outside = region_weights("eyes") == 0
    np.testing.assert_array_equal(out.mesh[:, outside], seq.mesh[:, outside])
    np.testing.assert_array_equal(edit.blink(seq, "keep").mesh, seq.mesh)


def test_blink_auto_inserts_the_scheduled_blinks_repeatably(clips):
    seq = clips["KristiNoem"]
    model = blinks.load_blink_model()
    out = edit.blink(seq, "auto", seed=7)
    schedule = blinks.schedule_blinks(model, seq.num_frames / seq.fps, np.random.default_rng(7))
    found = blinks.detect_blinks(out.mesh, out.fps)
    assert len(found) == len(schedule) >= 3
    for b, s in zip(found, schedule, strict=True):
        assert b.duration(seq.fps) == pytest.approx(s.duration_s, abs=1.01 / seq.fps)
        assert (
            s.start_s * seq.fps - 1
            <= b.onset
            <= b.start
            <= (s.start_s + s.duration_s / model.half_fraction) * seq.fps
        )
    np.testing.assert_array_equal(edit.blink(seq, "auto", seed=7).mesh, out.mesh)
    assert not np.array_equal(edit.blink(seq, "auto", seed=8).mesh, out.mesh)
    assert f"{len(schedule)} blinks" in out.meta["history"][-1]
    # The eyes close as far as in a typical blink of the measured clips.
    closure = blinks.closure(out.mesh, out.fps, model.closed_ratio)
    assert closure.max() == pytest.approx(1.0, abs=0.05)


def test_blink_auto_rate_and_durations_follow_the_model():
    model = blinks.load_blink_model()
    seq = make_seq(30 * 600, seed=0, optional=False)  # ten minutes
    seq = edit.scale_expression(seq, 0.0)  # a still face: no blinks of its own
    found = blinks.detect_blinks(edit.blink(seq, "auto", seed=1).mesh, seq.fps)
    assert len(found) / 10 == pytest.approx(model.rate_per_minute, rel=0.15)
    durations = [b.duration(seq.fps) for b in found]
    assert np.median(durations) == pytest.approx(np.median(model.durations_s), abs=1.01 / seq.fps)


def test_blink_from_a_file_copies_its_blinks(clips):
    source, seq = clips["feifeili_clip3"], clips["KristiNoem"]
    wanted = blinks.detect_blinks(source.mesh, source.fps)
    assert len(wanted) >= 2
    out = edit.blink(seq, source)
    found = blinks.detect_blinks(out.mesh, out.fps)
    assert len(found) == len(wanted)  # and none of the sequence's own blinks past the source's end
    for a, b in zip(found, wanted, strict=True):
        assert abs(a.start - b.start) <= 1 and abs((a.end - a.start) - (b.end - b.start)) <= 1


def test_shipped_blink_model_is_measured_on_real_clips():
    model = blinks.load_blink_model()
    assert "measured on" in model.source and "KristiNoem" in model.source
    assert 10 <= model.rate_per_minute <= 50  # people blink 15-30 times a minute, more when talking
    assert 0.03 <= np.median(model.durations_s) <= 0.3
    assert 0.0 < model.closed_ratio < 0.5
    assert model.profile[0] == 0 and model.profile[-1] == 0 and model.profile.max() == 1
    # The displacement closes the lids (upper lid moves down) and stays in the eye region.
    assert model.closed_delta[159, 1] < 0 and model.closed_delta[386, 1] < 0
    assert np.abs(model.closed_delta[region_weights("eyes") == 0]).max() == 0


@pytest.mark.slow
def test_shipped_blink_model_is_reproduced_from_the_shared_clips(tmp_path, face_model):
    """`python -m common.measure_blinks ../shared/data/talking/*.mp4` writes the shipped file again."""
    videos = sorted(shared_file("talking").glob("*.mp4"))
    from common.measure_blinks import main

    main([*map(str, videos), "--model", str(face_model), "-o", str(tmp_path / "b.npz")])
    again, shipped = blinks.BlinkModel.load(tmp_path / "b.npz"), blinks.load_blink_model()
    np.testing.assert_allclose(again.durations_s, shipped.durations_s)
    np.testing.assert_allclose(again.closed_delta, shipped.closed_delta, atol=1e-5)


# --------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------


def test_edit_cli_applies_the_documented_order(clips, tmp_path):
    seq = clips["KristiNoem"]
    seq.save(tmp_path / "clip.npz")
    lmk([
        "edit", str(tmp_path / "clip.npz"), "-o", str(tmp_path / "out.npz"), "--trim", "1:", "--smooth", "9",
        "--blink", "auto", "--seed", "3", "--pose", "still", "--rotate", "yaw=10",
        "--pose-curve", "0:yaw=0;4:yaw=20", "--expression-scale", "1.2",
    ])  # fmt: skip
    out = LandmarkSequence.load(tmp_path / "out.npz")
    steps = [h.split()[0] for h in out.meta["history"]]
    assert steps[-7:] == ["trim", "smooth", "scale_expression", "blink", "set_pose", "rotate", "pose_curve"]
    # Blinks come after smoothing, so a wide window does not erase them.
    assert len(blinks.detect_blinks(out.mesh, out.fps)) >= 3
    # The curve adds to the still pose plus the rotation: 10 + 20 degrees of yaw at 4 s.
    first = edit.trim(seq, round(seq.fps)).pose[0]
    assert out.pose[round(4 * seq.fps), 1] == pytest.approx(first[1] + 30.0, abs=0.5)
    assert out.pose[0, 1] == pytest.approx(first[1] + 10.0, abs=0.5)


def test_mix_cli(clips, tmp_path, capsys):
    clips["KristiNoem"].save(tmp_path / "a.npz")
    clips["feifeili_clip3"].save(tmp_path / "b.npz")
    lmk(["mix", "--base", str(tmp_path / "a.npz"), "--mouth", str(tmp_path / "b.npz"), "--eyes",
         str(tmp_path / "b.npz"), "--length", "shortest", "-o", str(tmp_path / "m.npz")])  # fmt: skip
    out = LandmarkSequence.load(tmp_path / "m.npz")
    assert out.num_frames == clips["feifeili_clip3"].num_frames
    assert "mouth, eyes mixed in" in capsys.readouterr().out
    expected = edit.mix(
        clips["KristiNoem"], mouth=clips["feifeili_clip3"], eyes=clips["feifeili_clip3"], length="shortest"
    )
    np.testing.assert_allclose(out.mesh, expected.mesh, atol=1e-5)
