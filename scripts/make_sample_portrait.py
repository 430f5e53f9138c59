"""Write studio/assets/sample-portrait.jpg, the photo template previews run on.

Run once (the file is committed): .venv/bin/python scripts/make_sample_portrait.py
Source: skimage.data.astronaut(), Eileen Collins, NASA, public domain; it ships
inside the scikit-image wheel, so nothing is downloaded.
"""

from pathlib import Path

from PIL import Image
from skimage import data

TARGET = Path(__file__).resolve().parent.parent / "studio" / "assets" / "sample-portrait.jpg"


def main() -> None:
    image = Image.fromarray(data.astronaut())  # 512x512 RGB, one frontal face
    # 1024 px so every vendor's minimum face width is met.
    image = image.resize((1024, 1024), Image.Resampling.LANCZOS)
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    image.save(TARGET, "JPEG", quality=90, optimize=True)
    print(f"wrote {TARGET} ({TARGET.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
