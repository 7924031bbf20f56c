"""How benchmarks/data/classes.csv was made: class-labelled nucleus points on MoNuSeg-train and TNBC tiles.

No class-labelled H&E nucleus set can be had here, so these are our own labels. Candidates are proposed from the
truth nuclei by morphology and context, per tile (stain differs between tiles):

- lymphocyte: small (12-30 µm²), round (eccentricity < 0.7), solid (> 0.93), among the darkest fifth of the tile
  and more even than its median (no nucleolus, no open chromatin);
- tumour (epithelial): large (>= 55 µm²), not spindle-shaped (eccentricity < 0.85), in a crowd (>= 3 other nucleus
  centres within 25 µm);
- stroma (fibroblast): spindle-shaped (eccentricity >= 0.93, minor axis <= 5 µm), with at most one neighbour within
  12.5 µm.

Nuclei cut by the tile's edge are never candidates. At most `PER_TILE` of each class per tile are drawn (seeded), then every candidate was looked at in the contact
sheets this script writes (``--sheets DIR``: 64 x 64 px crops at 0.25 µm/px, the nucleus outlined) and the ones
that did not look like their class were listed in `REJECTED` and left out. The rules use the same kind of numbers
as the classifier's features, so agreement with them partly measures the rules: see docs/CLASSIFY.md.

    python benchmarks/make_class_labels.py --out benchmarks/data/classes.csv --sheets /tmp/sheets --cache /tmp/feat
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PER_TILE = 8
MPP = 0.25
#: (tile stem, nucleus id) of candidates judged not to be their class by eye in the contact sheets (two nuclei
#: outlined as one, a shape cut by the crop, an odd blot)
REJECTED: set[tuple[str, int]] = {
    ("TCGA-NH-A8F7-01A-01-TS1", 303), ("tnbc_05_3", 28), ("tnbc_04_7", 31), ("tnbc_08_2", 23), ("tnbc_10_3", 55),
    ("tnbc_07_1", 29), ("tnbc_06_2", 6), ("TCGA-A7-A13E-01Z-00-DX1", 116), ("TCGA-G9-6348-01Z-00-DX1", 388),
    ("TCGA-38-6178-01Z-00-DX1", 192), ("TCGA-21-5784-01Z-00-DX1", 392), ("tnbc_01_7", 33), ("tnbc_05_4", 60),
}
#: (tile stem, class): tiles where that class's candidates did not look like it as a whole: for lymphocytes,
#: tiles whose small dark nuclei are epithelial or tumour nuclei (nucleoli, open chromatin, cell borders around
#: them) or pale; for all classes, blurred or very dark tiles where outlines hold several nuclei
REJECTED_TILES: set[tuple[str, str]] = {
    *((f"TCGA-{t}", "lymphocyte") for t in (
        "18-5592-01Z-00-DX1", "21-5786-01Z-00-DX1", "49-4488-01Z-00-DX1", "50-5931-01Z-00-DX1",
        "AR-A1AK-01Z-00-DX1", "AR-A1AS-01Z-00-DX1", "CH-5767-01Z-00-DX1", "DK-A2I6-01A-01-TS1",
        "G2-A2EK-01A-02-TSB", "G9-6336-01Z-00-DX1", "G9-6348-01Z-00-DX1", "G9-6356-01Z-00-DX1",
        "G9-6362-01Z-00-DX1", "G9-6363-01Z-00-DX1", "HE-7129-01Z-00-DX1", "HE-7130-01Z-00-DX1")),
    *((f"tnbc_{t}", "lymphocyte") for t in ("01_1", "01_2", "01_3", "01_4", "01_5", "01_6", "01_7", "02_1", "02_2",
                                           "02_3", "05_1", "05_2", "05_3", "05_4", "06_1", "06_2", "06_3",
                                           "09_1", "09_2", "09_3", "09_4", "09_5", "09_6", "11_1", "11_2",
                                           "11_3")),
    *((f"TCGA-{t}", klass) for t in ("AY-A8YK-01A-01-TS1", "DK-A2I6-01A-01-TS1", "G2-A2EK-01A-02-TSB",
                                     "NH-A8F7-01A-01-TS1") for klass in ("tumour", "stroma")),
    ("TCGA-RD-A8N9-01A-01-TS1", "tumour"), ("TCGA-18-5592-01Z-00-DX1", "stroma"),
}

def tiles() -> list[tuple[Path, Path]]:
    out = []
    for folder in ("monuseg-train", "tnbc"):
        for image in sorted((DATA / folder / "images").glob("*.png")):
            out.append((image, DATA / folder / "labels" / image.name))
    return out


def tile_table(image: Path, labels_path: Path, cache: Path | None) -> dict[str, np.ndarray]:
    """Features (`nucseg.classify.features`), ids, centres and whether each truth nucleus touches the tile's edge
    (cached in `cache` when given: the rules can then be tried again in seconds)."""
    from PIL import Image
    from scipy import ndimage as ndi

    from nucseg.classify.features import block_features
    from nucseg.io.label_blocks import iter_label_blocks

    if cache is not None and (cache / f"{image.stem}.npz").exists():
        return dict(np.load(cache / f"{image.stem}.npz"))
    rgb = np.asarray(Image.open(image).convert("RGB"))
    labels = np.asarray(Image.open(labels_path)).astype(np.int64)
    parts = []
    for block in iter_label_blocks(labels):
        (wy, wx), (h, w) = block.origin, block.labels.shape
        f = block_features(block, rgb[wy:wy + h, wx:wx + w], MPP)
        n = block.ids.size
        com = np.array(ndi.center_of_mass(np.ones_like(block.labels), block.labels, np.arange(1, n + 1)))
        boxes = ndi.find_objects(block.labels)
        edge = np.array([b[0].start + wy == 0 or b[1].start + wx == 0 or b[0].stop + wy == labels.shape[0]
                         or b[1].stop + wx == labels.shape[1] for b in boxes])
        on = np.array([block.labels[int(round(c[0])), int(round(c[1]))] == k + 1 for k, c in enumerate(com)])
        parts.append((f, block.ids, com[:, 1] + wx + 0.5, com[:, 0] + wy + 0.5, edge, on))
    table = {k: np.concatenate(v) for k, v in zip(("features", "ids", "x", "y", "edge", "centre_on"),
                                                  zip(*parts, strict=True), strict=True)}
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(cache / f"{image.stem}.npz", **table)
    return table


def candidates(table: dict[str, np.ndarray], rng: np.random.Generator) -> list[tuple[int, float, float, str]]:
    """(id, x, y, class) proposals of one tile, by the rules of the module docstring."""
    from nucseg.classify.features import feature_names

    col = {n: table["features"][:, i] for i, n in enumerate(feature_names())}
    usable = ~table["edge"].astype(bool) & table["centre_on"].astype(bool)
    rules = {
        "lymphocyte": (col["area_um2"] >= 12) & (col["area_um2"] <= 30) & (col["eccentricity"] < 0.7)
        & (col["solidity"] > 0.93) & (col["brightness"] <= np.percentile(col["brightness"], 20))
        & (col["h_cv"] <= np.median(col["h_cv"])),
        "tumour": (col["area_um2"] >= 55) & (col["eccentricity"] < 0.85) & (col["near_25um"] >= 3),
        "stroma": (col["eccentricity"] >= 0.93) & (col["minor_axis_um"] <= 5) & (col["near_12um"] <= 1),
    }
    out = []
    for klass, keep in rules.items():
        for k in rng.permutation(np.flatnonzero(keep & usable))[:PER_TILE]:
            out.append((int(table["ids"][k]), float(table["x"][k]), float(table["y"][k]), klass))
    return out


def contact_sheet(rows: list[tuple[str, int, float, float, str, Path, Path]], path: Path, cols: int = 10) -> None:
    """A grid of 64 x 64 crops (shown at 2x), the nucleus outlined in yellow, its tile and id under it."""
    from PIL import Image, ImageDraw
    from skimage.segmentation import find_boundaries

    cell = 128
    sheet = Image.new("RGB", (cols * cell, (-(-len(rows) // cols)) * (cell + 12)), "white")
    draw = ImageDraw.Draw(sheet)
    cache: dict[Path, tuple[np.ndarray, np.ndarray]] = {}
    for n, (stem, nid, x, y, _, image, labels_path) in enumerate(rows):
        if image not in cache:
            cache[image] = (np.asarray(Image.open(image).convert("RGB")), np.asarray(Image.open(labels_path)))
        rgb, lab = cache[image]
        y0, x0 = max(0, int(y) - 32), max(0, int(x) - 32)
        crop = rgb[y0:y0 + 64, x0:x0 + 64].copy()
        edge = find_boundaries(lab[y0:y0 + 64, x0:x0 + 64] == nid, mode="outer")
        crop[edge] = (255, 255, 0)
        tile = Image.fromarray(crop).resize((cell - 4, cell - 4), Image.NEAREST)
        px, py = (n % cols) * cell, (n // cols) * (cell + 12)
        sheet.paste(tile, (px, py))
        draw.text((px, py + cell - 4), f"{stem[:14]}:{nid}", fill="black")
    sheet.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "data" / "classes.csv")
    parser.add_argument("--sheets", type=Path, help="write contact sheets per class here (to look at)")
    parser.add_argument("--cache", type=Path, help="keep each tile's features here (to try the rules again)")
    args = parser.parse_args()
    rng = np.random.default_rng(23)
    rows = []
    for image, labels_path in tiles():
        stem = image.stem
        for nid, x, y, klass in candidates(tile_table(image, labels_path, args.cache), rng):
            if (stem, nid) not in REJECTED and (stem, klass) not in REJECTED_TILES:
                rows.append((stem, nid, x, y, klass, image, labels_path))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "x", "y", "class", "nucleus_id"])
        for _stem, nid, x, y, klass, image, _ in rows:
            writer.writerow([os.path.relpath(image, args.out.parent), f"{x:.1f}", f"{y:.1f}", klass, nid])
    counts = {k: sum(r[4] == k for r in rows) for k in ("tumour", "lymphocyte", "stroma")}
    print(f"{args.out}: {len(rows)} points {counts}")
    if args.sheets:
        args.sheets.mkdir(parents=True, exist_ok=True)
        for klass in counts:
            mine = [r for r in rows if r[4] == klass]
            for part in range(0, len(mine), 100):
                contact_sheet(mine[part:part + 100], args.sheets / f"{klass}_{part // 100}.png")


if __name__ == "__main__":
    main()
