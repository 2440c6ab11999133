"""What a MergeVLA camera sees: the first observation's image of every suite's tasks (rows) in a
few variations (columns), one PNG. Used for the figure in docs/mergevla.md::

    python scripts/render_mergevla_camera.py --camera workspace --out results/mergevla/workspace_camera.png
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--camera", default="workspace")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--markers", action="store_true", help="draw the goal's depth markers and a yellow puck")
    ap.add_argument("--variations", type=int, nargs="+", default=[0, 7, 19, 33, 45])
    ap.add_argument("--suites", nargs="+", default=["reach_push", "drawer", "door_window", "button"])
    ap.add_argument("--scale", type=int, default=2, help="pixels per image pixel in the PNG")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    import numpy as np
    from PIL import Image
    from streammoe_envs.metaworld import SUITES
    from streammoe_envs.metaworld.env import MetaWorldTaskEnv

    unknown = sorted(set(args.suites) - set(SUITES))
    if unknown:
        raise SystemExit(f"unknown suites {unknown}; choose from {sorted(SUITES)}")
    rows = []
    for task in [t for s in args.suites for t in SUITES[s]]:
        row = []
        for v in args.variations:
            env = MetaWorldTaskEnv(task, v, vision=True, image_size=args.image_size, camera=args.camera,
                                   markers=args.markers)
            row.append(env.reset()[0]["image"])
            env.close()
        rows.append(np.concatenate(row, 1))
    grid = np.concatenate(rows, 0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * args.scale, grid.shape[0] * args.scale),
                                 Image.NEAREST).save(args.out)
    print(f"wrote {args.out} ({len(rows)} tasks x {len(args.variations)} variations, camera {args.camera}"
          f"{', markers' if args.markers else ''})")


if __name__ == "__main__":
    main()
