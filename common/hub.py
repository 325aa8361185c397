"""Files from the Hugging Face Hub at pinned revisions, with errors in our words.

:data:`REVISIONS` is the one place where the revision of every hub repository the converters download
from is pinned (``python -m audio2lmk.convert aniportrait --from-hub`` and
``python -m lmk2video.convert aniportrait --from-hub``). ``--revision REPO=REV`` on those commands
overrides one (a commit hash, a tag or a branch).

Downloads go through ``huggingface_hub.hf_hub_download``: only the files asked for, into the standard
hub cache (``HF_HOME`` / ``HF_HUB_CACHE``, or ``cache_dir``), resumed when interrupted, with its
progress bars. ``HF_HUB_OFFLINE=1`` uses the cache only. A file that cannot be had (offline and not
cached, missing from the repository, a revision or repository that does not exist, a network error)
raises one :class:`~common.errors.UserError` naming the repository, revision and file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from common.errors import UserError

log = logging.getLogger(__name__)

# Pinned revisions of the repositories AniPortrait's inference needs. Commit hashes where one is known;
# ZJYang/AniPortrait follows its main branch (its files have one release; pin a commit with --revision).
REVISIONS: dict[str, str] = {
    # AniPortrait's own weights: audio2mesh.pt, audio2pose.pt, denoising_unet.pth, reference_unet.pth,
    # pose_guider.pth, motion_module.pth.
    "ZJYang/AniPortrait": "main",
    # The wav2vec2 AniPortrait's audio models were built on (its config; weights only when needed).
    "facebook/wav2vec2-base-960h": "22aad52d435eb6dbaf354bdad9b0da84ce7d6156",
    # The VAE AniPortrait decodes with.
    "stabilityai/sd-vae-ft-mse": "31f26fdeee1355a5c34592e401dd41e45d25a493",
    # Its CLIP image encoder: the image_encoder of the v2.0 release.
    "lambdalabs/sd-image-variations-diffusers": "a2a13984e57db80adcc9e3f85d568dcccb9b29fc",
}


def parse_revisions(values: Sequence[str] | None) -> dict[str, str]:
    """``--revision REPO=REV`` options -> ``{repo: revision}``; a malformed one is a :class:`UserError`."""
    overrides: dict[str, str] = {}
    for value in values or ():
        repo, sep, revision = value.partition("=")
        repo, revision = repo.strip(), revision.strip()
        if not sep or not repo or not revision or repo.count("/") != 1:
            raise UserError(
                f"--revision {value!r}: expected REPO=REVISION, e.g. --revision ZJYang/AniPortrait=main"
            )
        overrides[repo] = revision
    return overrides


def revision_of(repo_id: str, overrides: Mapping[str, str] | None = None) -> str:
    """The revision to download ``repo_id`` at: an override, else the pinned one, else ``main``."""
    return dict(overrides or {}).get(repo_id) or REVISIONS.get(repo_id, "main")


def download(
    repo_id: str,
    filenames: str | Sequence[str],
    *,
    revisions: Mapping[str, str] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Download one file of ``repo_id`` (or take it from the cache) and return its local path.

    ``filenames``: the file, or alternatives in order of preference (``model.safetensors``, then
    ``pytorch_model.bin``): the first one the repository has at that revision is taken.
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    names = [filenames] if isinstance(filenames, str) else list(filenames)
    revision = revision_of(repo_id, revisions)
    where = f"{repo_id}@{revision}"
    cache = Path(cache_dir).expanduser() if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    override = f"--revision {repo_id}=REV"
    not_cached: list[str] = []
    for name in names:
        log.info("%s: %s", where, name)
        try:
            path = hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir)
        except LocalEntryNotFoundError:
            not_cached.append(name)  # offline and not in the cache: maybe an alternative is
            continue
        except RevisionNotFoundError:
            raise UserError(
                f"the hub repository {repo_id} has no revision {revision!r}; pass {override} with one it has"
            ) from None
        except GatedRepoError:
            raise UserError(
                f"the hub repository {repo_id} is gated: accept its terms on huggingface.co and log in "
                "(`huggingface-cli login`), then rerun"
            ) from None
        except RepositoryNotFoundError:
            raise UserError(
                f"the hub repository {repo_id} does not exist or is private; check the name or log in"
            ) from None
        except EntryNotFoundError:
            continue  # the repository lacks this alternative
        except (HfHubHTTPError, OSError) as err:
            raise UserError(
                f"cannot download {name} from {where}: {err}; check the network and the free space "
                f"in {cache}, then rerun (finished files are kept)"
            ) from None
        return Path(path)
    if not_cached:
        offline = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the hub cannot be reached"
        raise UserError(
            f"{' or '.join(not_cached)} of {where} is not in the hub cache {cache} and {offline}; "
            f"connect and rerun, or fill the cache elsewhere (huggingface-cli download {repo_id} "
            f"{not_cached[0]} --revision {revision}) and copy it here"
        )
    raise UserError(
        f"the hub repository {where} has no {' or '.join(names)}; pass {override} with a revision that has it"
    )


def add_hub_arguments(parser, what: str) -> None:
    """A converter's ``--from-hub``, ``--revision REPO=REV`` and ``--cache-dir`` options (``what``: the help
    text of ``--from-hub``)."""
    parser.add_argument("--from-hub", action="store_true", help=what)
    parser.add_argument(
        "--revision",
        action="append",
        default=[],
        metavar="REPO=REV",
        help="with --from-hub: download REPO at REV instead of the pinned revision (common.hub.REVISIONS)",
    )
    parser.add_argument(
        "--cache-dir", default=None, help="with --from-hub: hub cache folder (default HF_HUB_CACHE)"
    )


def hub_options(args) -> dict | None:
    """The download options of parsed :func:`add_hub_arguments` (``revisions``, ``cache_dir``), or None without
    ``--from-hub``; ``--revision`` / ``--cache-dir`` without it are refused."""
    if not args.from_hub:
        if args.revision or args.cache_dir:
            raise UserError("--revision and --cache-dir go with --from-hub; add it or drop them")
        return None
    return {"revisions": parse_revisions(args.revision), "cache_dir": args.cache_dir}
