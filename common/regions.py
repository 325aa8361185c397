"""Face regions of the 468-vertex mesh as smooth per-vertex weights, and expression offsets.

A region is a weight in [0, 1] per vertex of the pose-free mesh (``common.geometry``), computed once on
MediaPipe's canonical face (cm, x to the subject's left, y up):

==========  =====================================================================================
region      core (weight 1)
==========  =====================================================================================
``eyes``    both eyes' contours (the lids)
``brows``   both brows; never above ``1 - eyes`` (the lids belong to the eyes)
``mouth``   the lower face: every vertex at or below the top of the upper lip (vertex 0): lips, jaw,
            chin, lower cheeks; never above ``1 - eyes - brows``
==========  =====================================================================================

Around its core a region fades out over :data:`FADE_RINGS` rings of mesh neighbours (a smoothstep,
``3x^2 - 2x^3``, of the number of edges to the core: 0.74 and 0.26, then 0). Neighbouring vertices are at most
one ring apart, so no mesh edge sees a jump of more than 0.5: an edit that moves a region by its weight leaves
no seam. The three weights sum to at most 1 at every vertex; the rest of the face (nose, outer cheeks,
forehead, ears) is in no region.

An *expression offset* is a frame's mesh minus the mesh of the sequence's most neutral frame
(``common.edit.neutral_frame``); offsets of another face are carried over scaled by the ratio of
inter-ocular distances, as ``common.edit.retarget`` does.
"""

from __future__ import annotations

import functools

import numpy as np

from common.geometry import canonical_face

REGIONS = ("mouth", "eyes", "brows")

# Mesh vertex indices (MediaPipe's 468-vertex face mesh), as drawn by common.draw.
RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173)
LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398)
RIGHT_BROW = (46, 53, 52, 65, 55, 70, 63, 105, 66, 107)
LEFT_BROW = (276, 283, 282, 295, 285, 300, 293, 334, 296, 336)
SUBNASALE = 2
UPPER_LIP_TOP = 0

FADE_RINGS = 2  # a region's weight falls to 0 over this many rings of mesh neighbours around its core


def smoothstep(x: np.ndarray) -> np.ndarray:
    """``3x^2 - 2x^3`` of ``x`` clipped to [0, 1]: 0 -> 0, 1 -> 1, flat at both ends."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


@functools.cache
def _rings_from() -> np.ndarray:
    """Hops (468, 468) between every two vertices along the canonical mesh's edges."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import shortest_path

    tri = canonical_face().triangles
    edges = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(468, 468))
    return shortest_path(graph, directed=False, unweighted=True)


def _fade(core: np.ndarray) -> np.ndarray:
    """1 on the ``core`` vertices, ``smoothstep(1 - k / (FADE_RINGS + 1))`` k rings of neighbours away, then 0."""
    rings = _rings_from()[np.flatnonzero(core)].min(axis=0)
    return smoothstep(1.0 - rings / (FADE_RINGS + 1))


@functools.cache
def _weights() -> dict[str, np.ndarray]:
    v = canonical_face().vertices.astype(np.float64)
    index = np.arange(len(v))
    eyes = _fade(np.isin(index, RIGHT_EYE + LEFT_EYE))
    brows = np.minimum(_fade(np.isin(index, RIGHT_BROW + LEFT_BROW)), 1.0 - eyes)
    mouth = np.minimum(_fade(v[:, 1] <= v[UPPER_LIP_TOP, 1]), 1.0 - eyes - brows)
    weights = {"mouth": mouth, "eyes": eyes, "brows": brows}
    for w in weights.values():
        w.setflags(write=False)
    return weights


def region_weights(name: str) -> np.ndarray:
    """The weights (468,) of region ``name`` (one of :data:`REGIONS`), read-only."""
    if name not in REGIONS:
        raise ValueError(f"unknown face region {name!r}; regions: {', '.join(REGIONS)}")
    return _weights()[name]


def expression_offsets(mesh: np.ndarray, neutral: int) -> np.ndarray:
    """Offsets (T, 468, 3) of every frame of ``mesh`` (T, 468, 3) from its frame ``neutral``."""
    mesh = np.asarray(mesh, dtype=np.float64)
    return mesh - mesh[neutral][None]
