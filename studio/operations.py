"""The catalogue of operations, described as data.

Each operation declares its provider, its inputs, its parameters (type, range,
default), the limits its input photo must meet, and how many outputs it makes.
Forms, validation, pre-flight checks and the operation picker are all derived
from these declarations; adding an operation is a catalogue entry plus a
provider method, never an edit to views or templates.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from studio.errors import UserFacingError

from studio.imaging import FaceBox
from studio.segmentation import BACKDROPS

# Formats a stored photo can have come from (see imaging.ACCEPTED_FORMATS).
ALL_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "HEIF"})


class ParamError(UserFacingError, ValueError):
    """A submitted parameter value is out of range or not offered."""


@dataclass(frozen=True)
class Param:
    name: str
    label: str
    kind: str  # "float" | "int" | "choice" | "text" | "bool" | "style"
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[tuple[str, str], ...] = ()
    help: str = ""
    max_length: int = 500
    # kind "style": the vendor catalogue (feature name) whose styles are offered;
    # the styles themselves live in the database (studio.styles), not here.
    catalogue: str = ""
    multiple: bool = False  # "style": several may be picked, one job each

    def clean(self, raw: Any) -> Any:
        """Turn a submitted value into a valid one, or raise ParamError."""
        if raw is None or raw == "":
            return self.default
        if self.kind == "style":
            # Vendor ids exceed 2**53: kept as the exact string, never a number (Perfect
            # Corp v1 ids are digits, its v2 template ids words like "good_template_001").
            # Whether the style exists (and is offered) is checked against the database.
            text = str(raw).strip()
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}", text):
                raise ParamError(f"Pick one of the offered options for {self.label}.")
            return text
        if self.kind in ("float", "int"):
            try:
                value = float(raw) if self.kind == "float" else int(str(raw).strip())
            except (TypeError, ValueError):
                raise ParamError(f"{self.label} must be a number.") from None
            if math.isnan(value):
                raise ParamError(f"{self.label} must be a number.")
            if (self.minimum is not None and value < self.minimum) or (
                self.maximum is not None and value > self.maximum
            ):
                raise ParamError(
                    f"{self.label} must be between {_fmt(self.minimum)} and {_fmt(self.maximum)}."
                )
            return round(value, 4) if self.kind == "float" else value
        if self.kind == "choice":
            if str(raw) not in {value for value, _ in self.choices}:
                raise ParamError(f"Pick one of the offered options for {self.label}.")
            return str(raw)
        if self.kind == "bool":
            return str(raw).lower() in ("1", "true", "on", "yes")
        text = str(raw).strip()
        if len(text) > self.max_length:
            raise ParamError(f"{self.label} can be at most {self.max_length} characters.")
        return text

    def describe_range(self) -> str:
        if self.kind in ("float", "int") and self.minimum is not None:
            return f"{_fmt(self.minimum)}–{_fmt(self.maximum)}, default {_fmt(self.default)}"
        if self.kind == "choice":
            return f"default {dict(self.choices).get(self.default, self.default)}"
        return ""


def _fmt(number) -> str:
    if number is None:
        return ""
    return f"{number:g}" if isinstance(number, float) else str(number)


@dataclass(frozen=True)
class InputLimits:
    """What the input photo must satisfy before any work (or credit) is spent."""

    formats: frozenset[str] = ALL_FORMATS
    max_long_side: int | None = None  # larger photos are reduced automatically
    max_bytes: int | None = None
    min_faces: int = 0
    max_faces: int | None = None
    min_face_width: int | None = None  # in pixels of the stored photo

    def problems(self, *, faces: list[FaceBox], source_format: str, long_side: int | None = None) -> list[str]:
        """Why a photo cannot be used, as messages telling the user what to do.

        `long_side` (the stored photo's) lets the face-width check account for
        the automatic reduction to `max_long_side` the face will go through.
        """
        found: list[str] = []
        shrink = 1.0
        if long_side and self.max_long_side and long_side > self.max_long_side:
            shrink = self.max_long_side / long_side
        if source_format not in self.formats:
            names = ", ".join(sorted(self.formats))
            found.append(f"This operation takes {names} photos; please upload one of those.")
        if len(faces) < self.min_faces:
            found.append(
                "We couldn't find a face in this photo. Use a well-lit photo that shows "
                "the face from the front."
            )
        elif self.max_faces is not None and len(faces) > self.max_faces:
            found.append(
                f"This photo shows {len(faces)} faces; this operation needs exactly one person. "
                "Crop the photo to one person or pick another photo."
            )
        elif self.min_face_width and faces and int(faces[0].w * shrink) < self.min_face_width:
            found.append(
                f"The face is too small ({int(faces[0].w * shrink)} px wide; at least {self.min_face_width} px "
                "needed). Move closer to the camera or crop the photo around the face."
            )
        return found


@dataclass(frozen=True)
class Inputs:
    selfie: bool = True
    reference_label: str = ""  # non-empty: a second photo is asked for under this label
    # Non-empty: a second photo may stand in for the style pick, where the provider
    # offers that (`Provider.style_reference_offered`, e.g. Perfect Corp v2's hairstyle).
    style_reference_label: str = ""
    mask: bool = False
    prompt_label: str = ""  # non-empty: a text prompt is asked for


@dataclass(frozen=True)
class Operation:
    """One catalogue entry: what it runs on, its inputs and parameters."""

    key: str
    label: str
    summary: str
    provider: str
    params: tuple[Param, ...] = ()
    inputs: Inputs = field(default_factory=Inputs)
    limits: InputLimits = field(default_factory=InputLimits)
    outputs: int = 1
    output_format: str = "JPEG"
    # A symbol name in static/studio/icons.svg (e.g. "hair"); any other text is shown as it is.
    icon: str = "sparkle"
    # Which picker group it sits in (GROUPS): what it changes in the photo.
    group: str = "portrait"
    # The picker tile's one line (the summary is shown once the operation is picked).
    tagline: str = ""

    @property
    def one_line(self) -> str:
        return self.tagline or self.summary

    def param(self, name: str) -> Param:
        for param in self.params:
            if param.name == name:
                return param
        raise KeyError(name)

    def defaults(self) -> dict[str, Any]:
        return {param.name: param.default for param in self.params}

    def clean_params(self, raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """Validated parameters and per-field errors, from submitted values."""
        cleaned: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for param in self.params:
            try:
                cleaned[param.name] = param.clean(raw.get(param.name))
            except ParamError as exc:
                errors[param.name] = exc.message
        return cleaned, errors


# The picker's groups, in the order shown: what an operation changes.
GROUPS: dict[str, str] = {
    "portrait": "Portrait",
    "hair": "Hair",
    "background": "Background",
    "create": "Create",
}

STRENGTH = Param(
    "strength",
    "Strength",
    "float",
    0.6,
    minimum=0.0,
    maximum=1.0,
    step=0.05,
    help="0 leaves the photo as it is; 1 is the strongest effect.",
)

# --- On this server ------------------------------------------------------------
LOCAL_OPERATIONS = (
    Operation(
        key="studio_retouch",
        tagline="Light, colour, skin",
        label="Studio retouch",
        summary="Balances exposure and white balance, adds local contrast, smooths skin "
        "while keeping detail, and sharpens lightly.",
        provider="local",
        params=(STRENGTH,),
        icon="retouch",
    ),
    Operation(
        key="headshot_crop",
        tagline="Profile & passport",
        label="Headshot crop",
        summary="Crops around your face with proper head room, for profiles, CVs and "
        "passport photos (35×45 mm at 600 dpi).",
        provider="local",
        params=(
            Param(
                "preset",
                "Format",
                "choice",
                "4:5",
                choices=(
                    ("1:1", "Square 1:1"),
                    ("4:5", "Portrait 4:5"),
                    ("3:4", "Portrait 3:4"),
                    ("passport", "Passport 35×45 mm"),
                ),
            ),
        ),
        limits=InputLimits(min_faces=1, max_faces=1),
        icon="crop",
    ),
    Operation(
        key="background_blur",
        tagline="Portrait mode",
        label="Background blur",
        summary="Portrait mode: keeps you sharp and blurs what is behind you.",
        provider="local",
        params=(
            Param(
                "strength",
                "Blur amount",
                "float",
                0.6,
                minimum=0.1,
                maximum=1.0,
                step=0.05,
                help="How strongly the background is blurred.",
            ),
        ),
        limits=InputLimits(min_faces=1),
        icon="blur",
        group="background",
    ),
    Operation(
        key="background_remove",
        tagline="Transparent PNG",
        label="Cut-out",
        summary="Removes the background on this server: a PNG of you with transparency.",
        provider="local",
        output_format="PNG",
        limits=InputLimits(min_faces=1),
        icon="cutout",
        group="background",
    ),
    Operation(
        key="background_replace",
        tagline="Plain or gradient",
        label="Studio backdrop",
        summary="Puts you in front of a studio backdrop: soft grey, a plain colour or a gradient.",
        provider="local",
        params=(
            Param(
                "backdrop",
                "Backdrop",
                "choice",
                "studio_grey",
                choices=tuple((key, b.label) for key, b in BACKDROPS.items()),
            ),
        ),
        limits=InputLimits(min_faces=1),
        icon="photo",
        group="background",
    ),
)

# --- Perfect Corp (vendor-apis.md §1) ---------------------------------------------
# Limits from the vendor page's "Supported Formats & Dimensions" table (§1.9.1).
# Every stored photo is a normalized JPEG, which every feature accepts, so the
# source format never refuses a photo; oversized photos are reduced by the
# adapter, so `max_long_side` only informs the face-width check.
_PC_MAX_BYTES = 10 * 1024 * 1024  # "< 10MB" for every feature
# Hair features: long side <= 1024, face width >= 128 px, one person.
_PC_HAIR_LIMITS = InputLimits(
    max_long_side=1024, max_bytes=_PC_MAX_BYTES, min_faces=1, max_faces=1, min_face_width=128
)
_PC_EDIT_LIMITS = InputLimits(max_long_side=4096, max_bytes=_PC_MAX_BYTES)


def _pc_style(catalogue: str, label: str, *, multiple: bool = True) -> Param:
    """A pick from one of Perfect Corp's style catalogues (synced by studio.styles)."""
    return Param(
        "style_id",
        label,
        "style",
        "",
        catalogue=catalogue,
        multiple=multiple,
        help="Pick one or several; each style gives its own result." if multiple else "",
    )


def _pc_hair(
    key: str, feature: str, label: str, style_label: str, summary: str, icon: str, inputs: Inputs | None = None
) -> Operation:
    return Operation(
        key=key,
        tagline=HAIR_TAGLINES[key],
        label=label,
        summary=summary,
        provider="perfectcorp",
        params=(_pc_style(feature, style_label),),
        inputs=inputs or Inputs(),
        limits=_PC_HAIR_LIMITS,
        icon=icon,
        group="hair",
    )


HAIR_TAGLINES = {
    "pc_hairstyle": "Try a new haircut",
    "pc_wig": "Try wigs on",
    "pc_hair_extension": "Longer hair",
    "pc_bangs": "Fringes and bangs",
    "pc_hair_volume": "Fuller hair",
}

PERFECTCORP_OPERATIONS: tuple[Operation, ...] = (
    _pc_hair(
        "pc_hairstyle",
        "hair-style",
        "Hairstyle try-on",
        "Hairstyle",
        "See yourself with a new haircut: pick one or several styles from the catalogue.",
        "hair",
        Inputs(style_reference_label="Or a photo of the hair you want"),
    ),
    _pc_hair(
        "pc_wig",
        "wig",
        "Wig try-on",
        "Wig",
        "Try long, short and medium wigs, straight to coily, before you buy one.",
        "hair",
    ),
    _pc_hair(
        "pc_hair_extension",
        "hair-ext",
        "Hair extensions",
        "Extension",
        "Preview longer hair with extensions in several lengths.",
        "hair",
    ),
    _pc_hair(
        "pc_bangs",
        "hair-bang",
        "Bangs",
        "Bangs style",
        "Try fringes and bangs on your own hair.",
        "hair",
    ),
    _pc_hair(
        "pc_hair_volume",
        "hair-vol",
        "Hair volume",
        "Volume",
        "Fuller, denser hair: fills thin spots and adds natural volume.",
        "hair",
    ),
    Operation(
        key="pc_aging",
        tagline="You at other ages",
        label="Aging series",
        summary="One selfie, a series of you at different ages, from young to old.",
        provider="perfectcorp",
        # Not on the vendor page; newer vendor docs ask for one person (§1.9.1 [PR]).
        limits=InputLimits(max_long_side=4096, max_bytes=_PC_MAX_BYTES, min_faces=1, max_faces=1),
        outputs=1,  # at least; the engine decides how many ages the series has
        icon="aging",
    ),
    Operation(
        key="pc_makeup_transfer",
        tagline="Copy a makeup look",
        label="Makeup transfer",
        summary="Copy the makeup look from any photo onto your face.",
        provider="perfectcorp",
        inputs=Inputs(reference_label="Photo with the look to copy"),
        limits=InputLimits(max_long_side=1024, max_bytes=_PC_MAX_BYTES, min_faces=1, max_faces=1),
        icon="makeup",
    ),
    Operation(
        key="pc_object_removal",
        tagline="Paint it out",
        label="Object removal",
        summary="Paint over what should go (a stranger, a sign, a stain); it is filled in naturally.",
        provider="perfectcorp",
        inputs=Inputs(mask=True),
        limits=_PC_EDIT_LIMITS,
        icon="eraser",
        group="background",
    ),
    Operation(
        key="pc_colorize",
        tagline="Colour for old photos",
        label="Colorize",
        summary="Brings black-and-white and faded photos back to colour.",
        provider="perfectcorp",
        limits=_PC_EDIT_LIMITS,
        icon="colorize",
    ),
    Operation(
        key="pc_background_removal",
        tagline="Transparent PNG (AI)",
        label="Background removal",
        summary="Cuts you out: a PNG with a transparent background.",
        provider="perfectcorp",
        limits=_PC_EDIT_LIMITS,
        output_format="PNG",
        icon="cutout",
        group="background",
    ),
    Operation(
        key="pc_enhance",
        tagline="Sharper, cleaner, bigger",
        label="Photo enhance",
        summary="Sharpens, denoises and fixes colours; optionally upscales 2× or 4×.",
        provider="perfectcorp",
        params=(
            Param(
                "scale",
                "Scale",
                "choice",
                "1",
                choices=(("1", "1× (same size)"), ("2", "2×"), ("4", "4×")),
                help="1× restores detail at the same size; 2× and 4× also enlarge.",
            ),
        ),
        limits=_PC_EDIT_LIMITS,
        icon="enhance",
    ),
    Operation(
        key="pc_image_generator",
        tagline="A picture from words",
        label="Image generator",
        summary="Describe a picture and pick a style; no photo needed.",
        provider="perfectcorp",
        params=(
            Param(
                "prompt",
                "Describe the picture",
                "text",
                "",
                max_length=1000,
                help="What should be in it, e.g. “studio portrait of a ceramic fox, soft window light”.",
            ),
            _pc_style("text-to-image", "Style", multiple=False),
        ),
        # prompt_label: the prompt is required (job_inputs checks it).
        inputs=Inputs(selfie=False, prompt_label="Describe the picture"),
        limits=InputLimits(),
        icon="generate",
        group="create",
    ),
)

# --- Headshot API (§4), WaveSpeed (§2), Vtrix (§3) --------------------------------
_MB = 1024 * 1024


def _seed(minimum: int) -> Param:
    """A vendor seed: empty picks a random one, which is reported on every result."""
    return Param(
        "seed",
        "Seed",
        "int",
        None,
        minimum=minimum,
        maximum=2**31 - 1,
        help="Same seed and settings give the same picture. Leave empty for a random one; "
        "the seed used is shown with each result.",
    )


def _prompt(label: str, default: str = "", help: str = "") -> Param:
    return Param("prompt", label, "text", default, max_length=1000, help=help)


HEADSHOT_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        key="ai_headshot",
        tagline="Professional headshots",
        label="AI headshot",
        summary="Professional headshots of you in a style from the template library; the same "
        "template gives everyone the same look.",
        provider="headshot",
        params=(
            # The template's prompt and seed travel in "prompt" and "seed" (§4.2 "Templates").
            Param("template", "Style template", "text", "", max_length=80),
            _prompt("Prompt", help="Filled in from the template; edit it to make your own look."),
            _seed(1),  # the page: "integer > 0", −1 = random
            Param("num_images", "Number of images", "int", 1, minimum=1, maximum=8, step=1),
            Param(
                "identity_scale",
                "Identity strength",
                "float",
                0.8,
                minimum=0.0,
                maximum=1.0,
                step=0.05,
                help="Higher keeps more of your own features.",
            ),
            Param(
                "size",
                "Output size",
                "choice",
                "3:4",
                choices=(("3:4", "3:4 (768×1024)"), ("1:1", "1:1 (768×768)"), ("custom", "Custom")),
            ),
            Param("width", "Width (custom)", "int", 768, minimum=512, maximum=2024, step=8),
            Param("height", "Height (custom)", "int", 1024, minimum=512, maximum=2024, step=8),
        ),
        inputs=Inputs(prompt_label="Describe the look (or pick a template)"),
        # The vendor documents no input limits; ours (§4.5 [EMU]): one face, ≤ 5 MB, ≤ 2048 px.
        limits=InputLimits(max_long_side=2048, max_bytes=5 * _MB, min_faces=1, max_faces=1),
        icon="headshot",
    ),
)

# WaveSpeed documents no input limits; ours (§2.5 [EMU]): ≤ 10 MB, long side ≤ 2048.
WAVESPEED_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        key="ws_portrait",
        tagline="Retouch by instruction",
        label="Portrait enhance",
        summary="Tell it what to change (light, skin, mood) and it retouches your portrait.",
        provider="wavespeed",
        params=(
            _prompt("Edit instruction", "Flattering soft light, even skin tone, natural look"),
            _seed(0),  # −1 … 2147483647 on the page; −1 is our empty
        ),
        inputs=Inputs(prompt_label="Edit instruction"),
        limits=InputLimits(max_long_side=2048, max_bytes=10 * _MB, min_faces=1),
        icon="sparkle",
    ),
    Operation(
        key="ws_character",
        tagline="You in any scene",
        label="Character",
        summary="You as a character in any scene: describe the action, mood and setting.",
        provider="wavespeed",
        params=(
            _prompt("Scene", "Waving from a sunny beach, cheerful, colourful cartoon style"),
            Param("width", "Width", "int", 1024, minimum=256, maximum=1536, step=8),
            Param("height", "Height", "int", 1024, minimum=256, maximum=1536, step=8),
            _seed(0),
        ),
        inputs=Inputs(prompt_label="Action, mood and setting"),
        limits=InputLimits(max_long_side=2048, max_bytes=10 * _MB, min_faces=1, max_faces=1),
        icon="character",
        group="create",
    ),
)


def _tenths(name: str, label: str, default: float, help: str) -> Param:
    return Param(name, label, "float", default, minimum=0.0, maximum=1.0, step=0.1, help=help)


VTRIX_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        key="vtrix_spark_portrait",
        tagline="HD face and even skin",
        label="Spark portrait",
        summary="HD face, skin beautification and even skin tone, each on its own slider.",
        provider="vtrix",
        params=(
            _tenths("gpen", "HD face", 0.4, "Higher gives a clearer, sharper face."),
            _tenths("skin", "Skin beautification", 0.3, "Higher smooths the skin more."),
            _tenths("skin_unifi", "Skin uniformity", 0.0, "Higher evens the skin tone and hides blemishes."),
            Param(
                "gen_mode",
                "Reference mode",
                "choice",
                "auto",
                choices=(
                    ("auto", "Automatic (creative with a prompt, else reference)"),
                    ("creative", "Creative: follow the prompt"),
                    ("reference", "Reference: keep you and your background"),
                    ("reference_char", "Character: keep you, new background"),
                ),
            ),
            _prompt("Prompt (optional)"),
            Param("width", "Width", "int", 1328, minimum=512, maximum=2048, step=8),
            Param("height", "Height", "int", 1328, minimum=512, maximum=2048, step=8),
            _seed(1),  # "the same positive integer"
        ),
        # No Inputs.prompt_label: that makes a prompt required, and here it is optional
        # (it only switches the automatic mode to "creative").
        # The vendor page: JPG/PNG (we always send our normalized JPEG), ≤ 5 MB,
        # ≤ 4096 × 4096, exactly one face.
        limits=InputLimits(max_long_side=4096, max_bytes=5 * _MB, min_faces=1, max_faces=1),
        icon="sparkle",
    ),
)

_CATALOGUE = (
    *LOCAL_OPERATIONS,
    *PERFECTCORP_OPERATIONS,
    *HEADSHOT_OPERATIONS,
    *WAVESPEED_OPERATIONS,
    *VTRIX_OPERATIONS,
)

OPERATIONS: dict[str, Operation] = {op.key: op for op in _CATALOGUE}


def get_operation(key: str) -> Operation:
    """The operation with this key; KeyError when there is none."""
    return OPERATIONS[key]


# How long a job usually takes before this site has measured it (selectors.
# operation_typical_seconds measures it from recent jobs): per provider, from
# the vendors' documented timings. Past SLOW_SECONDS, "E-mail me when it's
# done" is ticked by default.
TYPICAL_SECONDS_BY_PROVIDER = {"local": 5, "perfectcorp": 20, "wavespeed": 40, "vtrix": 45, "headshot": 90}
SLOW_SECONDS = 30
