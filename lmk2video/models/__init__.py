"""Networks of lmk2video; import each from its own module (e.g. ``lmk2video.models.pose_guider``)."""
