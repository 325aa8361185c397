"""The landmark file: round trips and validation errors that name the key and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.errors import UserError
from common.geometry import canonical_face
from common.lmkfile import SCHEMA_VERSION, LandmarkSequence, load


def make_seq(t: int = 5, **kwargs) -> LandmarkSequence:
    rng = np.random.default_rng(0)
    mesh = canonical_face().vertices[None] + rng.normal(0, 0.05, (t, 468, 3))
    pose = np.concatenate([rng.normal(0, 3, (t, 3)), np.tile([0.5, 0.5, -30.0], (t, 1))], axis=1)
    return LandmarkSequence(mesh=mesh, pose=pose, fps=25.0, image_size=(256, 320), **kwargs)


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    seq = make_seq(
        landmarks2d=rng.uniform(0, 256, (5, 478, 2)),
        blendshapes=rng.uniform(0, 1, (5, 52)),
        face_found=np.array([1, 1, 0, 1, 1], bool),
        reference_mesh=canonical_face().vertices,
        reference_pose=np.zeros(6),
        meta={"source": "x.mp4"},
    )
    path = seq.save(tmp_path / "a.npz")
    back = load(path)
    for key in (
        "mesh",
        "pose",
        "landmarks2d",
        "blendshapes",
        "face_found",
        "reference_mesh",
        "reference_pose",
    ):
        np.testing.assert_array_equal(getattr(back, key), getattr(seq, key))
        assert getattr(back, key).dtype == getattr(seq, key).dtype
    assert back.fps == 25.0 and back.image_size == (256, 320)
    assert back.meta["source"] == "x.mp4" and "created" in back.meta
    with np.load(path, allow_pickle=False) as data:  # plain arrays, no pickles, the documented keys
        assert set(data.files) == {
            "version", "mesh", "pose", "fps", "image_size", "landmarks2d", "blendshapes",
            "face_found", "reference_mesh", "reference_pose", "meta",
        }  # fmt: skip
        assert int(data["version"]) == SCHEMA_VERSION
        assert data["mesh"].dtype == np.float32 and data["pose"].dtype == np.float32


def test_project_uses_file_size_by_default():
    seq = make_seq()
    assert seq.project().shape == (5, 468, 2)
    np.testing.assert_allclose(seq.project((512, 640)), seq.project() * 2, rtol=1e-5)


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.pop("mesh"), "missing required key"),
        (lambda a: a.update(mesh=a["mesh"][:, :100]), "'mesh' has shape"),
        (lambda a: a.update(pose=a["pose"][:-1]), "'pose' has shape"),
        (lambda a: a.update(fps=np.array(0.0)), "'fps' is 0, outside"),
        (lambda a: a.update(fps=np.array([30.0, 25.0])), "'fps' must be a number"),
        (lambda a: a.update(version=np.array(99)), "'version' is 99"),
        (lambda a: a.update(image_size=np.array([0, 10])), "'image_size'"),
        (lambda a: a["mesh"].__setitem__((2, 10, 1), np.nan), "'mesh' contains NaN"),
        (lambda a: a["pose"].__setitem__((0, 3), np.inf), "'pose' contains NaN or inf"),
        (lambda a: a.update(landmarks2d=np.zeros((5, 468, 2), np.float32)), "'landmarks2d' has shape"),
        (lambda a: a.update(mesh=a["mesh"].astype(np.int32)), "'mesh' has dtype int32"),
        (lambda a: a.update(meta=np.array("{not json")), "'meta' must be JSON text"),
    ],
)
def test_validation_errors_name_key(tmp_path, change, message):
    arrays = make_seq().to_arrays()
    change(arrays)
    path = write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserError, match=message) as err:
        load(path)
    assert str(path) in str(err.value)


def test_corrupt_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"\x00not a zip file" * 10)
    for path in (empty, garbage):
        with pytest.raises(UserError, match="not a readable landmark"):
            load(path)
    with pytest.raises(UserError, match="no such landmark file"):
        load(tmp_path / "missing.npz")


def test_save_is_atomic_and_validates(tmp_path):
    seq = make_seq()
    seq.mesh[1, 2, 0] = np.nan
    with pytest.raises(UserError, match="NaN"):
        seq.save(tmp_path / "out.npz")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match=r"end in \.npz"):
        make_seq().save(tmp_path / "out.txt")


def test_unwritable_output(tmp_path):
    """A folder nobody may write to: a read-only one for a normal user, /proc (even for root)."""
    import os

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        target = ro if not os.access(ro, os.W_OK) else Path("/proc")
        with pytest.raises(UserError, match=r"cannot write .*(permission denied|No such file|choose)"):
            make_seq().save(target / "out.npz")
        assert sorted(p.name for p in ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_select_and_history():
    seq = make_seq(t=6, face_found=np.ones(6, bool))
    sub = seq.select(slice(1, 4)).with_history("trim 1:4")
    assert sub.num_frames == 3 and sub.face_found.shape == (3,)
    np.testing.assert_array_equal(sub.mesh, seq.mesh[1:4])
    assert sub.meta["history"] == ["trim 1:4"] and "history" not in seq.meta
    assert json.loads(json.dumps(sub.meta)) == sub.meta


def test_output_under_a_file_is_refused(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot create output folder"):
        make_seq().save(blocker / "sub" / "out.npz")
