"""The local provider: real image processing on this machine, no key needed."""

from __future__ import annotations

from studio import effects, imaging
from studio.vendors.base import JobInput, Output, Progress, Provider, Submission, VendorError

# Operation key → function(image, faces, **params, progress=...) in studio.effects.
EFFECTS = {
    "studio_retouch": effects.studio_retouch,
    "headshot_crop": effects.headshot_crop,
    "background_blur": effects.background_blur,
    "background_remove": effects.background_remove,
    "background_replace": effects.background_replace,
}
# How each output format is written; a cut-out keeps its alpha channel.
ENCODERS = {
    "JPEG": (lambda image: imaging.encode_jpeg(image, quality=92), "image/jpeg"),
    "PNG": (imaging.encode_png, "image/png"),
}


class LocalProvider(Provider):
    key = "local"
    label = "This server"
    runs_locally = True

    def submit(self, job: JobInput) -> Submission:
        effect = EFFECTS.get(job.operation.key)
        if effect is None:
            raise VendorError("This operation is not available on this server.", permanent=True)
        job.report("Reading photo", 0.05)
        try:
            image = imaging.load_image(job.image)
        except imaging.ImageRejected as exc:
            raise VendorError(exc.message, permanent=True) from exc
        try:
            result = effect(image, job.faces, progress=job.report, **job.params)
        except effects.EffectError as exc:
            raise VendorError(exc.message, permanent=True) from exc
        job.report("Saving result", 0.95)
        encode, content_type = ENCODERS[job.operation.output_format]
        meta = {"width": result.width, "height": result.height}
        if "segmentation" in result.info:  # which method found the person (shown on the result)
            meta["segmentation"] = result.info["segmentation"]
        output = Output(
            data=encode(result),
            content_type=content_type,
            label=job.operation.label,
            meta=meta,
        )
        return Submission(
            task_id=f"local-{job.job_id}",
            progress=Progress(finished=True, stage="Done", fraction=1.0, outputs=(output,)),
        )
