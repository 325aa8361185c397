"""``python -m lmk2video.app`` (``make app``): the web app, speech or a driving video -> a talking portrait.

A Gradio page around :class:`lmk2video.app_jobs.Studio`: upload a portrait (or pick a sample) and speech (or
record it), preview the landmarks the speech drives in seconds, adjust them (head pose source, pose style,
mouth and expression scale, smoothing, rotation offsets and pose curve, blinks, regions from a driving
video), then generate the video; the video, the landmark file and the preview are downloadable. The
Reenactment tab drives the portrait with a talking video instead.

Host and port are Gradio's: ``GRADIO_SERVER_NAME`` (default 127.0.0.1; 0.0.0.0 serves the network) and
``GRADIO_SERVER_PORT`` (default 7860). Jobs run through Gradio's queue, one generation at a time per
lmk2video model (the others wait and see their place in the queue); a running job can be cancelled; the
temporary files of a session are removed when its page is closed, and those of app processes that ended
when the app starts.
"""

# No ``from __future__ import annotations``: Gradio reads the handlers' ``gr.Request`` annotations as objects.
import argparse
import dataclasses
import functools
import logging
import threading
from pathlib import Path
from typing import Any

from common.errors import UserError, exit_on_user_error
from lmk2video.app_jobs import (
    BLINKS,
    MAX_AUDIO_SECONDS,
    MAX_UPLOAD,
    PRESETS,
    Adjustments,
    Cancelled,
    JobFiles,
    Report,
    SamplerChoice,
    Studio,
    audio2lmk_styles,
    parse_upload_size,
)
from talking_portrait import CHECKOUT

log = logging.getLogger("lmk2video.app")

ROOT = CHECKOUT if CHECKOUT is not None else Path.cwd()
SAMPLE = ROOT / "examples" / "sample"
DELETE_CACHE = (600, 3600)  # Gradio's copies of uploads and results: checked every 10 min, removed after 1 h

POSE_LABELS = {
    "model": "from the speech (audio2lmk)",
    "still": "still",
    "template": "pose template (.npy)",
    "video": "from the driving video",
}
BLINK_LABELS = {"keep": "keep", "auto": "natural (seeded)", "none": "none", "video": "from the driving video"}
PRESET_LABELS = {
    "quality": "quality (the model's own sampler)",
    "balanced": "balanced (DPM++ 10 steps)",
    "fastest": "fastest",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lmk2video.app", description=__doc__.splitlines()[0])
    p.add_argument(
        "--models",
        default=str(ROOT / "models"),
        help="folder searched for model folders (audio2lmk.json / model_index.json); default: the checkout's models/",
    )
    p.add_argument(
        "--temp-dir",
        default=None,
        help="root of the sessions' temporary files (default: $TMPDIR/talking-portrait-app-UID)",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        default=MAX_AUDIO_SECONDS,
        help=f"longest speech or driving video accepted, seconds (default {MAX_AUDIO_SECONDS:g})",
    )
    p.add_argument(
        "--max-upload", default=MAX_UPLOAD, help=f"largest upload, e.g. 50mb or 1gb (default {MAX_UPLOAD})"
    )
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N")
    p.add_argument("--queue-size", type=int, default=20, help="jobs that may wait in the queue (default 20)")
    return p


# ----------------------------------------------------------------------------------------- running jobs


class RunningJobs:
    """The cancel flag of each session's running job: the Cancel button sets it, the job's progress report
    raises :class:`Cancelled` at its next denoising pass or frame."""

    def __init__(self) -> None:
        self._flags: dict[str, threading.Event] = {}
        self._guard = threading.Lock()

    def start(self, session: str) -> threading.Event:
        with self._guard:
            flag = self._flags[session] = threading.Event()
        return flag

    def cancel(self, session: str) -> None:
        with self._guard:
            flag = self._flags.pop(session, None)
        if flag is not None:
            flag.set()


def reporter(progress: Any, flag: threading.Event) -> Report:
    """A job's progress report: Gradio's progress bar, and the cancel check."""

    def report(stage: str, done: int, total: int) -> None:
        if flag.is_set():
            raise Cancelled()
        if stage == "denoising":
            progress((done, total), desc="denoising (steps x context windows)", unit="UNet passes")
        elif stage == "decoding":
            progress((done, total), desc="decoding and writing frames", unit="frames")
        else:
            progress(0.0 if done < total else 1.0, desc="landmarks and preview")

    return report


def page_errors(fn):
    """Every error of a job is one readable message in the page: bad input as the library says it, a cancelled
    job as such, anything else as one line (its traceback goes to the app's log, never to the page)."""
    import gradio as gr

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            raise gr.Error(str(err), duration=None, print_exception=False) from None
        except Cancelled:
            raise gr.Error("the job was cancelled; nothing was written", print_exception=False) from None
        except gr.Error:
            raise
        except Exception as err:
            log.exception("the job failed")
            raise gr.Error(
                f"the job failed: {type(err).__name__}: {err} (a fault of the app, not of your input; the app's "
                "log has the details)",
                duration=None,
                print_exception=False,
            ) from None

    return wrapper


def _session(request: Any) -> str:
    return str(getattr(request, "session_hash", None) or "anonymous")


# ------------------------------------------------------------------------------------------------ page


@dataclasses.dataclass
class Panel:
    """The adjustment widgets of one tab, in the order their values reach :func:`adjustments_from`."""

    widgets: list[Any]
    sliders: list[Any]
    choices: list[Any]
    texts: list[Any]


def adjustments_from(
    pose: str,
    template: str | None,
    style: str,
    mouth: float,
    expression: float,
    smooth: float,
    yaw: float,
    pitch: float,
    roll: float,
    curve_text: str,
    curve_file: str | None,
    blink: str,
    mix: list[str],
    seed: float | None,
) -> Adjustments:
    """The panel's values as :class:`Adjustments` (checked by the job)."""
    return Adjustments(
        pose=pose,
        template=template,
        style=None if style in (None, "", "seed") else style,
        mouth_scale=mouth,
        expression_scale=expression,
        smooth=int(smooth) if isinstance(smooth, float) and smooth.is_integer() else smooth,
        yaw=yaw,
        pitch=pitch,
        roll=roll,
        pose_curve=curve_text or "",
        pose_curve_file=curve_file,
        blink=blink,
        mix=tuple(mix or ()),
        seed=int(seed) if isinstance(seed, float) and seed.is_integer() else seed,
    )


def sampler_from(preset: str, steps: float | None) -> SamplerChoice:
    if steps in (None, 0):
        return SamplerChoice(preset)
    return SamplerChoice(preset, int(steps) if isinstance(steps, float) and steps.is_integer() else steps)


def style_choices(folder: str | None) -> list[tuple[str, str]]:
    return [("drawn from the seed", "seed")] + [
        (f"{i}: {name}", str(i)) for i, name in enumerate(audio2lmk_styles(folder))
    ]


def adjustment_panel(gr: Any, *, speech: bool, audio2lmk: str | None) -> Panel:
    """The adjustment widgets (speech tab: all of them; reenactment: those that apply to a driving video)."""
    poses = ["model", "still", "template", "video"] if speech else ["model", "still", "template"]
    labels = dict(POSE_LABELS, model=POSE_LABELS["model"] if speech else "from the driving video")
    with gr.Row():
        pose = gr.Radio([(labels[p], p) for p in poses], value="model", label="Head pose")
        style = gr.Dropdown(
            style_choices(audio2lmk), value="seed", label="Pose style (audio2lmk)", visible=speech
        )
        template = gr.File(
            label="Pose template (.npy, frames x 6)", file_types=[".npy"], type="filepath", height=110
        )
    with gr.Row():
        mouth = gr.Slider(0, 3, value=1, step=0.05, label="Mouth scale")
        expression = gr.Slider(0, 3, value=1, step=0.05, label="Expression scale (all but the mouth)")
        smooth = gr.Slider(1, 31, value=1, step=1, label="Smoothing (frames)")
    with gr.Row():
        yaw = gr.Slider(-45, 45, value=0, step=0.5, label="Yaw offset (degrees)")
        pitch = gr.Slider(-45, 45, value=0, step=0.5, label="Pitch offset (degrees)")
        roll = gr.Slider(-45, 45, value=0, step=0.5, label="Roll offset (degrees)")
    with gr.Row():
        curve_text = gr.Textbox(
            label="Pose curve (keyframes: seconds and degrees)",
            placeholder="0:yaw=0;2.5:yaw=20;5:yaw=0",
            max_length=10_000,
        )
        curve_file = gr.File(
            label="... or a CSV (time,yaw,pitch,roll)", file_types=[".csv"], type="filepath", height=110
        )
    with gr.Row():
        blinks = BLINKS if speech else tuple(b for b in BLINKS if b != "video")
        blink = gr.Radio(
            [(BLINK_LABELS[b], b) for b in blinks],
            value="keep",
            label="Blinks",
            elem_id=f"{'speech' if speech else 'reenact'}-blinks",
        )
        mix = gr.CheckboxGroup(
            [("eyes", "eyes"), ("eyebrows", "brows")],
            value=[],
            label="Regions from the driving video",
            visible=speech,
        )
        seed = gr.Number(value=42, precision=0, minimum=0, label="Seed (style, blinks, noise)")
    widgets = [pose, template, style, mouth, expression, smooth, yaw, pitch, roll, curve_text, curve_file, blink,
               mix, seed]  # fmt: skip
    return Panel(
        widgets=widgets,
        sliders=[mouth, expression, smooth, yaw, pitch, roll],
        choices=[pose, template, style, curve_file, blink, mix],
        texts=[curve_text, seed],
    )


def portrait_image(gr: Any, **kwargs: Any) -> Any:
    """A ``gr.Image`` (type filepath) whose unreadable uploads are one readable message, not an internal error
    (Gradio opens an uploaded image with PIL before the job sees it). Its ``preprocess`` is wrapped on the
    instance: a subclass of a Gradio component would make Gradio write a ``.pyi`` stub beside this module."""
    image = gr.Image(type="filepath", sources=["upload"], **kwargs)
    plain = image.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return plain(payload)
        except (OSError, ValueError, SyntaxError):  # PIL's UnidentifiedImageError is an OSError
            name = getattr(payload, "orig_name", None) or "the upload"
            raise gr.Error(
                f"portrait '{name}' is not a readable image; upload a JPEG or PNG file",
                duration=None,
                print_exception=False,
            ) from None

    image.preprocess = preprocess
    return image


def driving_video(gr: Any, label: str, **kwargs: Any) -> Any:
    """A driving-video upload (kept as uploaded: no conversion, no ffmpeg) and the sample clip."""
    video = gr.Video(sources=["upload"], format=None, include_audio=True, label=label, height=200, **kwargs)
    if _samples("obama_clip1.mp4"):
        gr.Examples(_samples("obama_clip1.mp4"), inputs=video, label="Sample video")
    return video


def _samples(*names: str) -> list[str]:
    return [str(SAMPLE / n) for n in names if (SAMPLE / n).is_file()]


def build_app(studio: Studio) -> Any:
    """The page (a ``gr.Blocks``) for ``studio``'s models and limits; queue it and launch it."""
    import gradio as gr

    jobs = RunningJobs()
    models = studio.models
    video_models = list(models.lmk2video)
    default_a2l = str(models.default_audio2lmk) if models.default_audio2lmk else None
    default_l2v = str(models.default_lmk2video) if models.default_lmk2video else None
    limits_text = (
        f"Limits: speech and driving videos up to {studio.max_seconds:g} s, images up to 8192 px a side; one "
        "generation at a time per model (others wait in the queue, their place shown)."
    )

    with gr.Blocks(title="talking-portrait", delete_cache=DELETE_CACHE, analytics_enabled=False) as demo:
        gr.Markdown(
            "# talking-portrait\nSpeech -> 3D face landmarks -> video. Preview the landmarks, adjust them, then "
            f"generate. {limits_text}"
        )
        with gr.Row():
            a2l = gr.Dropdown(
                [(models.label(p), str(p)) for p in models.audio2lmk],
                value=default_a2l,
                label="audio2lmk model (speech -> landmarks)",
            )
            l2v = gr.Dropdown(
                [(models.label(p), str(p)) for p in video_models],
                value=default_l2v,
                label="lmk2video model (landmarks -> video)",
            )
        with gr.Row():
            preset = gr.Dropdown([(PRESET_LABELS[p], p) for p in PRESETS], value="quality", label="Sampler")
            steps = gr.Number(
                value=0, precision=0, minimum=0, label="Denoising steps (0 = the sampler's)", elem_id="steps"
            )

        tabs: dict[str, dict[str, Any]] = {}
        for kind in ("speech", "reenact"):
            speech = kind == "speech"
            with gr.Tab("Speech" if speech else "Reenactment"):
                with gr.Row():
                    with gr.Column():
                        portrait = portrait_image(
                            gr, label="Portrait", height=280, elem_id=f"{kind}-portrait"
                        )
                        if _samples("portrait_kristi.png", "reference_obama.png"):
                            gr.Examples(_samples("portrait_kristi.png", "reference_obama.png"), inputs=portrait,
                                        label="Sample portraits")  # fmt: skip
                    with gr.Column():
                        if speech:
                            sound = gr.Audio(
                                sources=["upload", "microphone"],
                                type="filepath",
                                label="Speech",
                                elem_id="speech-sound",
                            )
                            if _samples("speech_en.wav", "obama_clip1.wav"):
                                gr.Examples(_samples("speech_en.wav", "obama_clip1.wav"), inputs=sound,
                                            label="Sample speech")  # fmt: skip
                        else:
                            driving = driving_video(gr, "Driving video", elem_id=f"{kind}-driving")
                with gr.Accordion("Adjustments", open=speech):
                    if speech:  # the speech tab takes only the head pose, blinks or regions from a video
                        driving = driving_video(
                            gr,
                            "Driving video (for the head pose, blinks or regions)",
                            elem_id=f"{kind}-driving",
                        )
                    panel = adjustment_panel(gr, speech=speech, audio2lmk=default_a2l)
                with gr.Row():
                    preview_button = gr.Button(
                        "Preview landmarks", variant="secondary", elem_id=f"{kind}-preview-button"
                    )
                    buttons = [
                        gr.Button(
                            "Generate video",
                            variant="primary",
                            visible=str(p) == default_l2v,
                            elem_classes=[f"{kind}-generate"],
                        )
                        for p in video_models
                    ]
                    cancel = gr.Button("Cancel", variant="stop", elem_id=f"{kind}-cancel")
                if not video_models:
                    gr.Markdown(f"No lmk2video model folder under {models.root}: Generate is unavailable.")
                with gr.Row():
                    preview = gr.Video(
                        label="Landmark preview (with the sound)",
                        format=None,
                        interactive=False,
                        height=320,
                        elem_id=f"{kind}-preview",
                    )
                    result = gr.Video(
                        label="Generated video",
                        format=None,
                        interactive=False,
                        height=320,
                        elem_id=f"{kind}-result",
                    )
                downloads = gr.File(
                    label="Downloads", file_count="multiple", interactive=False, elem_id=f"{kind}-downloads"
                )
                tabs[kind] = {
                    "portrait": portrait,
                    "sound": sound if speech else None,
                    "driving": driving,
                    "panel": panel,
                    "preview_button": preview_button,
                    "buttons": buttons,
                    "cancel": cancel,
                    "preview": preview,
                    "result": result,
                    "downloads": downloads,
                }

        # ---------------------------------------------------------------- handlers
        def files_out(files: JobFiles) -> tuple[Any, Any, list[str]]:
            video = str(files.video) if files.video is not None else None
            return str(files.preview), video, [str(p) for p in files.downloads]

        # Gradio passes the request and the progress bar by position, before the inputs.
        @page_errors
        def speech_preview(request: gr.Request, model, portrait, sound, driving, *values):
            files = studio.speech_landmarks(
                _session(request),
                audio2lmk=model,
                portrait=portrait,
                speech=sound,
                adjustments=adjustments_from(*values),
                driving=driving,
            )
            return str(files.preview), [str(p) for p in files.downloads]

        def speech_update(request: gr.Request, model, portrait, sound, driving, *values):
            if not portrait or not sound:
                return gr.skip(), gr.skip()
            return speech_preview(request, model, portrait, sound, driving, *values)

        @page_errors
        def reenact_preview(request: gr.Request, portrait, driving, *values):
            files = studio.reenactment_landmarks(
                _session(request), portrait=portrait, driving=driving, adjustments=adjustments_from(*values)
            )
            return str(files.preview), [str(p) for p in files.downloads]

        def reenact_update(request: gr.Request, portrait, driving, *values):
            if not portrait or not driving:
                return gr.skip(), gr.skip()
            return reenact_preview(request, portrait, driving, *values)

        def speech_generator(lmk2video: str):
            @page_errors
            def run(request: gr.Request, progress=gr.Progress(), *values):  # noqa: B008
                model, portrait, sound, driving, preset, steps, *panel = values
                session = _session(request)
                files = studio.generate_speech(
                    session,
                    audio2lmk=model,
                    lmk2video=lmk2video,
                    portrait=portrait,
                    speech=sound,
                    adjustments=adjustments_from(*panel),
                    sampler=sampler_from(preset, steps),
                    driving=driving,
                    report=reporter(progress, jobs.start(session)),
                )
                return files_out(files)

            return run

        def reenact_generator(lmk2video: str):
            @page_errors
            def run(request: gr.Request, progress=gr.Progress(), *values):  # noqa: B008
                portrait, driving, preset, steps, *panel = values
                session = _session(request)
                files = studio.generate_reenactment(
                    session,
                    lmk2video=lmk2video,
                    portrait=portrait,
                    driving=driving,
                    adjustments=adjustments_from(*panel),
                    sampler=sampler_from(preset, steps),
                    report=reporter(progress, jobs.start(session)),
                )
                return files_out(files)

            return run

        def cancel_job(request: gr.Request):
            jobs.cancel(_session(request))

        def end_session(request: gr.Request):
            session = _session(request)
            jobs.cancel(session)
            studio.workspace.end(session)

        # ---------------------------------------------------------------- events
        for kind, tab in tabs.items():
            panel = tab["panel"]
            if kind == "speech":
                inputs = [a2l, tab["portrait"], tab["sound"], tab["driving"], *panel.widgets]
                preview_fn, update_fn, make = speech_preview, speech_update, speech_generator
                gen_inputs = [
                    a2l,
                    tab["portrait"],
                    tab["sound"],
                    tab["driving"],
                    preset,
                    steps,
                    *panel.widgets,
                ]
            else:
                inputs = [tab["portrait"], tab["driving"], *panel.widgets]
                preview_fn, update_fn, make = reenact_preview, reenact_update, reenact_generator
                gen_inputs = [tab["portrait"], tab["driving"], preset, steps, *panel.widgets]
            outputs = [tab["preview"], tab["downloads"]]
            previewing = {"concurrency_id": "preview", "concurrency_limit": 2, "api_name": False}
            tab["preview_button"].click(preview_fn, inputs, outputs, **previewing)
            # The preview follows the adjustments (once there is something to preview).
            for widget in panel.sliders:
                widget.release(update_fn, inputs, outputs, trigger_mode="always_last", **previewing)
            for widget in panel.choices:
                widget.change(update_fn, inputs, outputs, trigger_mode="always_last", **previewing)
            for widget in panel.texts:
                widget.submit(update_fn, inputs, outputs, trigger_mode="always_last", **previewing)
            events = [
                button.click(
                    make(str(path)),
                    gen_inputs,
                    [tab["preview"], tab["result"], tab["downloads"]],
                    show_progress_on=[tab["result"]],  # the preview stays visible meanwhile
                    concurrency_id=f"lmk2video-{i}",
                    concurrency_limit=1,
                    api_name=False,
                )
                for i, (path, button) in enumerate(zip(video_models, tab["buttons"]))
            ]
            tab["cancel"].click(cancel_job, None, None, cancels=events, queue=False, api_name=False)

        def switch_model(chosen: str):
            return [gr.update(visible=str(p) == chosen) for _ in tabs for p in video_models]

        all_buttons = [b for tab in tabs.values() for b in tab["buttons"]]
        if all_buttons:
            l2v.change(switch_model, l2v, all_buttons, queue=False, api_name=False)
        a2l.change(
            lambda folder: gr.update(choices=style_choices(folder), value="seed"),
            a2l,
            tabs["speech"]["panel"].widgets[2],
            queue=False,
            api_name=False,
        )
        demo.unload(end_session)
    return demo


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError(
            "the web app needs Gradio: pip install 'talking-portrait[app]' (or make app in a checkout)"
        ) from None
    max_upload = parse_upload_size(args.max_upload)
    if args.queue_size < 1:
        raise UserError(f"--queue-size {args.queue_size}: give a whole number >= 1")
    studio = Studio(args.models, args.temp_dir, max_seconds=args.max_seconds, device=args.device)
    if not studio.models.lmk2video and not studio.models.audio2lmk:
        raise UserError(
            f"no model folder under {studio.models.root}; pass --models DIR (the checkout's models/ holds the "
            "sample models)"
        )
    demo = build_app(studio)
    demo.queue(max_size=args.queue_size, default_concurrency_limit=1)
    demo.launch(
        max_file_size=max_upload,
        allowed_paths=[str(studio.workspace.root), str(SAMPLE)],
        ssr_mode=False,
        show_error=False,
    )


if __name__ == "__main__":
    main()
