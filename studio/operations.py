"""The catalogue of operations, described as data.

Each operation declares its provider, its inputs, its parameters (type, range,
default), the limits its input photo must meet, and how many outputs it makes.
Forms, validation, pre-flight checks and the operation picker are all derived
from these declarations; adding an operation is a catalogue entry plus a
provider method, never an edit to views or templates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from studio.errors import UserFacingError

from studio.imaging import FaceBox

# Formats a stored photo can have come from (see imaging.ACCEPTED_FORMATS).
ALL_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "HEIF"})


class ParamError(UserFacingError, ValueError):
    """A submitted parameter value is out of range or not offered."""


@dataclass(frozen=True)
class Param:
    name: str
    label: str
    kind: str  # "float" | "int" | "choice" | "text" | "bool"
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[tuple[str, str], ...] = ()
    help: str = ""
    max_length: int = 500

    def clean(self, raw: Any) -> Any:
        """Turn a submitted value into a valid one, or raise ParamError."""
        if raw is None or raw == "":
            return self.default
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

    def problems(self, *, faces: list[FaceBox], source_format: str) -> list[str]:
        """Why a photo cannot be used, as messages telling the user what to do."""
        found: list[str] = []
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
        elif self.min_face_width and faces and faces[0].w < self.min_face_width:
            found.append(
                f"The face is too small ({faces[0].w} px wide; at least {self.min_face_width} px "
                "needed). Move closer to the camera or crop the photo around the face."
            )
        return found


@dataclass(frozen=True)
class Inputs:
    selfie: bool = True
    reference_label: str = ""  # non-empty: a second photo is asked for under this label
    mask: bool = False
    prompt_label: str = ""  # non-empty: a text prompt is asked for


@dataclass(frozen=True)
class Operation:
    key: str
    label: str
    summary: str
    provider: str
    params: tuple[Param, ...] = ()
    inputs: Inputs = field(default_factory=Inputs)
    limits: InputLimits = field(default_factory=InputLimits)
    outputs: int = 1
    output_format: str = "JPEG"
    icon: str = "✨"

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
        label="Studio retouch",
        summary="Balances exposure and white balance, adds local contrast, smooths skin "
        "while keeping detail, and sharpens lightly.",
        provider="local",
        params=(STRENGTH,),
        icon="🪄",
    ),
    Operation(
        key="headshot_crop",
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
        icon="🖼️",
    ),
    Operation(
        key="background_blur",
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
        icon="🌫️",
    ),
)

# --- Perfect Corp (vendor-apis.md §1) ---------------------------------------------
PERFECTCORP_OPERATIONS: tuple[Operation, ...] = ()

# --- Headshot API (§4), WaveSpeed (§2), Vtrix (§3) --------------------------------
HEADSHOT_OPERATIONS: tuple[Operation, ...] = ()
WAVESPEED_OPERATIONS: tuple[Operation, ...] = ()
VTRIX_OPERATIONS: tuple[Operation, ...] = ()

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
