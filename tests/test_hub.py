"""common.hub: pinned revisions, overrides, alternatives and the errors users see."""

from __future__ import annotations

import re

import pytest

from common import hub
from common.errors import UserError
from tests.hub_cache import BRANCH_COMMIT, put_in_hub_cache


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)


def test_every_repository_is_pinned_to_a_commit_or_named_branch():
    for repo, revision in hub.REVISIONS.items():
        assert repo.count("/") == 1
        assert re.fullmatch(r"[0-9a-f]{40}", revision) or revision == "main", (repo, revision)


def test_revision_overrides():
    overrides = hub.parse_revisions(["ZJYang/AniPortrait=abc", " stabilityai/sd-vae-ft-mse = v1 "])
    assert overrides == {"ZJYang/AniPortrait": "abc", "stabilityai/sd-vae-ft-mse": "v1"}
    assert hub.revision_of("ZJYang/AniPortrait", overrides) == "abc"
    assert (
        hub.revision_of("facebook/wav2vec2-base-960h", overrides)
        == hub.REVISIONS["facebook/wav2vec2-base-960h"]
    )
    assert hub.revision_of("someone/else") == "main"
    for bad in ("ZJYang/AniPortrait", "=main", "noslash=main", "a/b="):
        with pytest.raises(UserError, match="expected REPO=REVISION"):
            hub.parse_revisions([bad])


def test_alternatives_and_offline_errors(tmp_path, offline):
    cache = tmp_path / "hub"
    (tmp_path / "weights.bin").write_bytes(b"\0" * 8)
    put_in_hub_cache(cache, "ZJYang/AniPortrait", "weights.bin", tmp_path / "weights.bin")
    got = hub.download("ZJYang/AniPortrait", ("weights.safetensors", "weights.bin"), cache_dir=cache)
    assert got.read_bytes() == b"\0" * 8 and BRANCH_COMMIT in str(got)
    with pytest.raises(UserError) as err:
        hub.download("ZJYang/AniPortrait", "other.pt", cache_dir=cache)
    message = str(err.value)
    assert "other.pt of ZJYang/AniPortrait@main is not in the hub cache" in message
    assert str(cache) in message and "HF_HUB_OFFLINE is set" in message
    # An overridden revision is looked up as such.
    with pytest.raises(UserError, match=r"weights\.bin of ZJYang/AniPortrait@v2 is not in the hub cache"):
        hub.download(
            "ZJYang/AniPortrait", "weights.bin", revisions={"ZJYang/AniPortrait": "v2"}, cache_dir=cache
        )


@pytest.mark.parametrize(
    ("error", "message"),
    [
        ("RevisionNotFoundError", "has no revision 'main'; pass --revision ZJYang/AniPortrait=REV"),
        ("RepositoryNotFoundError", "does not exist or is private"),
        ("GatedRepoError", "is gated"),
        ("RemoteEntryNotFoundError", "ZJYang/AniPortrait@main has no a.pt or b.pt"),
        ("HfHubHTTPError", "cannot download a.pt from ZJYang/AniPortrait@main"),
    ],
)
def test_hub_errors_become_one_message(monkeypatch, error, message):
    """What the hub answers online, in our words (the hub's own exceptions, raised by a stand-in)."""
    import huggingface_hub
    from huggingface_hub import errors

    httpx = pytest.importorskip("httpx")  # huggingface_hub's HTTP client

    def refuse(*args, **kwargs):
        response = httpx.Response(404, request=httpx.Request("GET", "https://huggingface.co/x"))
        raise getattr(errors, error)("the hub said no", response=response)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    with pytest.raises(UserError, match=re.escape(message)):
        hub.download("ZJYang/AniPortrait", ("a.pt", "b.pt"))
