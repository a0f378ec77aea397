"""Finding and reading image files: every kind of image the CLI may meet, good and bad, made here with Pillow."""

from __future__ import annotations

import io
import os
import struct
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from guided_backprop.errors import ImageError
from guided_backprop.images import IMAGE_EXTENSIONS, ImageNotFoundError, find_images, load_image

RNG = np.random.default_rng(0)


def rgb_array(h: int = 24, w: int = 32) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path: Path, image: Image.Image, **options: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR claims ``width`` x ``height`` (8-bit RGB) with no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ----------------------------------------------------------------------------- IMAGE_EXTENSIONS


def test_extensions_are_pillows_readable_ones_lower_case() -> None:
    for ext in (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm"):
        assert ext in IMAGE_EXTENSIONS
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS)
    assert ".txt" not in IMAGE_EXTENSIONS and ".pdf" not in IMAGE_EXTENSIONS  # PDF: Pillow writes, never reads
    assert ".h5" not in IMAGE_EXTENSIONS  # identification stubs cannot decode


# ----------------------------------------------------------------------------- find_images


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A folder with images at several depths, upper-case extensions, non-images and hidden files."""
    img = Image.fromarray(rgb_array(8, 8))
    for name in ["b.png", "a.JPG", "sub/c.Png", "sub/deeper/d.webp", "a_dir/e.gif", "z.TIFF"]:
        save(tmp_path / "data" / name, img)
    (tmp_path / "data" / "notes.txt").write_text("not an image")
    (tmp_path / "data" / "weights.npy").write_bytes(b"\x93NUMPY")
    save(tmp_path / "data" / "._a.jpg", img)  # macOS resource fork: hidden
    save(tmp_path / "data" / ".cache" / "f.png", img)  # hidden folder
    return tmp_path / "data"


def rel(paths: list[Path], root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in paths]


def test_folder_is_walked_recursively_sorted_any_case_skipping_hidden_and_non_images(tree: Path) -> None:
    found = find_images([tree])
    assert rel(found, tree) == ["a.JPG", "a_dir/e.gif", "b.png", "sub/c.Png", "sub/deeper/d.webp", "z.TIFF"]
    assert all(p.is_absolute() for p in found)


def test_single_path_argument_is_accepted(tree: Path) -> None:
    assert find_images(tree) == find_images([tree]) == find_images([str(tree)])


def test_glob_patterns_including_double_star(tree: Path) -> None:
    assert rel(find_images([str(tree / "*.png")]), tree) == ["b.png"]
    assert rel(find_images([str(tree / "**" / "*.[pP]ng")]), tree) == ["b.png", "sub/c.Png"]
    # a pattern matching folders walks them; non-image files matched by a pattern are skipped
    assert rel(find_images([str(tree / "s*")]), tree) == ["sub/c.Png", "sub/deeper/d.webp"]
    assert rel(find_images([str(tree / "*")]), tree)[:2] == ["a.JPG", "a_dir/e.gif"]


def test_named_file_is_taken_whatever_its_extension(tmp_path: Path) -> None:
    odd = save(tmp_path / "picture.data", Image.fromarray(rgb_array()), format="PNG")
    assert find_images([odd]) == [odd]
    assert load_image(odd).size == (32, 24)


def test_order_kept_and_duplicates_dropped(tree: Path) -> None:
    b = tree / "b.png"
    link = tree.parent / "link_to_b.png"
    link.symlink_to(b)
    found = find_images([b, str(b), tree / "sub" / ".." / "b.png", tree, link, str(tree / "*.png")])
    assert rel(found, tree) == ["b.png", "a.JPG", "a_dir/e.gif", "sub/c.Png", "sub/deeper/d.webp", "z.TIFF"]


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda root: [root / "missing.jpg"], "no such file or folder"),
        (lambda root: [str(root / "*.bmp")], "matched nothing"),
        (lambda root: [str(root / "*.txt")], "none of them an image"),
        (lambda root: [root / "empty"], "contains no image files"),
        (lambda root: [], "no input given"),
    ],
)
def test_inputs_that_yield_nothing_are_usage_errors(tree: Path, make, fragment: str) -> None:  # type: ignore[no-untyped-def]
    (tree / "empty").mkdir()
    with pytest.raises(ImageNotFoundError, match=fragment) as info:
        find_images(make(tree))
    assert isinstance(info.value, ImageError) and isinstance(info.value, FileNotFoundError)
    assert "\n" not in str(info.value)


def test_missing_input_among_good_ones_still_fails(tree: Path) -> None:
    with pytest.raises(ImageNotFoundError, match="nope.png"):
        find_images([tree / "b.png", tree / "nope.png"])


def test_names_with_spaces_and_non_ascii(tmp_path: Path) -> None:
    path = save(tmp_path / "dossier été" / "chat égyptien 猫.png", Image.fromarray(rgb_array()))
    assert find_images([tmp_path]) == [path]
    assert find_images([str(tmp_path / "*" / "*猫*")]) == [path]
    assert np.array_equal(np.asarray(load_image(path)), np.asarray(Image.open(path).convert("RGB")))


# ----------------------------------------------------------------------------- load_image: good images


def test_rgb_png_is_exact_and_jpeg_close(tmp_path: Path) -> None:
    a = rgb_array()
    img = load_image(save(tmp_path / "x.png", Image.fromarray(a)))
    assert img.mode == "RGB" and np.array_equal(np.asarray(img), a)
    smooth = np.repeat(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], 24, axis=0).repeat(3, axis=2)
    jpg = load_image(save(tmp_path / "x.JPEG", Image.fromarray(smooth), quality=95))
    assert jpg.mode == "RGB" and np.abs(np.asarray(jpg).astype(int) - smooth).max() <= 8


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grayscale_becomes_rgb(tmp_path: Path, mode: str) -> None:
    grey = Image.fromarray(RNG.integers(0, 256, (10, 12), dtype=np.uint8)).convert(mode)
    img = load_image(save(tmp_path / f"g_{mode}.png", grey))
    a = np.asarray(img)
    assert img.mode == "RGB" and a.shape == (10, 12, 3)
    assert np.array_equal(a[..., 0], np.asarray(grey.convert("L"))) and (a == a[..., :1]).all()


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_is_scaled_not_clipped(tmp_path: Path, suffix: str) -> None:
    values = np.array([[0, 257, 1000, 32768, 65535, 12850]], dtype=np.uint16)
    path = save(tmp_path / f"deep{suffix}", Image.fromarray(values))
    assert Image.open(path).mode.startswith("I;16")
    a = np.asarray(load_image(path))
    # round(v / 257): 1000 -> 4 (clipping would give 255), 32768 -> 127.5 -> 128
    assert a[..., 0].tolist() == [[0, 1, 4, 128, 255, 50]]
    assert (a == a[..., :1]).all()


def test_32_bit_integer_tiff_mode_i(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 10, 65535]], dtype=np.int32)
    path = save(tmp_path / "deep32.tif", Image.fromarray(values))
    assert Image.open(path).mode == "I"
    assert np.asarray(load_image(path))[..., 1].tolist() == [[0, 10, 255]]


def test_palette_with_transparency_composited_on_white(tmp_path: Path) -> None:
    pal = Image.new("P", (4, 2), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((1, 0), 1)
    path = save(tmp_path / "pal.png", pal, transparency=0)
    a = np.asarray(load_image(path))
    assert a[0, 1].tolist() == [255, 0, 0]  # opaque red stays red
    assert a[0, 0].tolist() == [255, 255, 255] and a[1, 3].tolist() == [255, 255, 255]  # transparent -> white
    opaque = save(tmp_path / "pal.gif", pal.copy())
    assert np.asarray(load_image(opaque))[0, 0].tolist() == [0, 0, 0]


def test_rgba_and_la_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = [255, 0, 0, 255]  # opaque red
    rgba[0, 1] = [255, 0, 0, 0]  # fully transparent
    rgba[1, 0] = [0, 0, 255, 128]  # half blue over white
    a = np.asarray(load_image(save(tmp_path / "rgba.png", Image.fromarray(rgba))))
    assert a[0, 0].tolist() == [255, 0, 0] and a[0, 1].tolist() == [255, 255, 255]
    assert np.abs(a[1, 0].astype(int) - [127, 127, 255]).max() <= 1
    la = Image.fromarray(np.array([[[0, 0], [0, 255]]], dtype=np.uint8), mode="LA")
    b = np.asarray(load_image(save(tmp_path / "la.png", la)))
    assert b[0, 0].tolist() == [255, 255, 255] and b[0, 1].tolist() == [0, 0, 0]


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_cmyk(tmp_path: Path, suffix: str) -> None:
    cmyk = Image.new("CMYK", (16, 8), (0, 0, 0, 0))  # white
    cmyk.paste((0, 255, 255, 0), (0, 0, 8, 8))  # red on the left
    a = np.asarray(load_image(save(tmp_path / f"cmyk{suffix}", cmyk)))
    assert a.shape == (8, 16, 3)
    assert np.abs(a[4, 2].astype(int) - [255, 0, 0]).max() <= 10
    assert np.abs(a[4, 13].astype(int) - [255, 255, 255]).max() <= 10


@pytest.mark.parametrize("suffix", [".gif", ".webp", ".png"])
def test_animated_first_frame(tmp_path: Path, suffix: str) -> None:
    frames = [Image.new("RGB", (12, 10), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    options: dict[str, object] = {"lossless": True} if suffix == ".webp" else {}
    path = save(tmp_path / f"anim{suffix}", frames[0], save_all=True, append_images=frames[1:], duration=50, **options)
    with Image.open(path) as check:
        assert getattr(check, "n_frames", 1) == 3
    a = np.asarray(load_image(path))
    assert a.shape == (10, 12, 3) and np.abs(a.astype(int) - [255, 0, 0]).max() <= 2


def test_one_pixel_image(tmp_path: Path) -> None:
    img = load_image(save(tmp_path / "px.png", Image.new("RGB", (1, 1), (1, 2, 3))))
    assert img.size == (1, 1) and img.getpixel((0, 0)) == (1, 2, 3)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_orientation_6_is_applied(tmp_path: Path, suffix: str) -> None:
    # stored 40 wide x 20 high, red block in the stored top-left corner, rest blue
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = save(
        tmp_path / f"rotated{suffix}", stored, exif=exif.tobytes(), **({"quality": 95} if suffix == ".jpg" else {})
    )
    img = load_image(path)
    assert img.size == (20, 40)  # transposed: width and height swapped
    a = np.asarray(img).astype(int)
    # clockwise: the stored top-left corner lands at the top-right
    assert np.abs(a[3, 16] - [255, 0, 0]).max() <= 30
    assert np.abs(a[3, 3] - [0, 0, 255]).max() <= 30
    assert np.abs(a[36, 16] - [0, 0, 255]).max() <= 30


def test_image_is_loaded_detached_and_file_closed(tmp_path: Path) -> None:
    path = save(tmp_path / "x.png", Image.fromarray(rgb_array()))
    before = open_fds() if sys.platform.startswith("linux") else None
    images = [load_image(path) for _ in range(20)]
    path.unlink()  # the pixels do not depend on the file any more
    assert all(np.asarray(i).shape == (24, 32, 3) for i in images)
    assert all(getattr(i, "fp", None) is None for i in images)
    if before is not None:
        assert open_fds() == before


# ----------------------------------------------------------------------------- load_image: bad files


def bad_files(root: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a fragment the error must contain)."""
    root.mkdir(parents=True, exist_ok=True)
    jpg = io.BytesIO()
    Image.fromarray(rgb_array(64, 64)).save(jpg, format="JPEG", quality=90)
    png = io.BytesIO()
    Image.fromarray(rgb_array(64, 64)).save(png, format="PNG")
    (root / "empty.jpg").write_bytes(b"")
    (root / "half.jpg").write_bytes(jpg.getvalue()[: len(jpg.getvalue()) // 2])
    (root / "no_end.jpg").write_bytes(jpg.getvalue()[:-2])
    (root / "half.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (root / "text.png").write_text("this is not a picture\n")
    png_header_only(root / "bomb.png", 100_000, 100_000)
    (root / "folder.png").mkdir()
    return {
        "zero-byte": (root / "empty.jpg", "empty file (0 bytes)"),
        "truncated jpeg": (root / "half.jpg", "truncated"),
        "jpeg without end marker": (root / "no_end.jpg", "truncated"),
        "truncated png": (root / "half.png", "truncated"),
        "text named .png": (root / "text.png", "not an image"),
        "decompression bomb": (root / "bomb.png", "decompression bomb"),
        "directory": (root / "folder.png", "is a folder"),
        "missing": (root / "gone.png", "no such file"),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "zero-byte",
        "truncated jpeg",
        "jpeg without end marker",
        "truncated png",
        "text named .png",
        "decompression bomb",
        "directory",
        "missing",
    ],
)
def test_bad_files_raise_one_line_image_error(tmp_path: Path, kind: str) -> None:
    path, fragment = bad_files(tmp_path / "bad")[kind]
    before = open_fds() if sys.platform.startswith("linux") else None
    with pytest.raises(ImageError) as info:
        load_image(path)
    message = str(info.value)
    assert fragment in message and str(path) in message and "\n" not in message
    if before is not None:
        assert open_fds() == before  # no leaked handle on failure either
    # global Pillow state is untouched
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert Image.MAX_IMAGE_PIXELS == int(1024 * 1024 * 1024 // 4 // 3)


def test_pixel_limit_below_twice_the_limit_is_an_error_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow only warns between 1x and 2x MAX_IMAGE_PIXELS; we refuse, and leave warning filters alone."""
    path = save(tmp_path / "x.png", Image.fromarray(rgb_array(40, 40)))
    small = save(tmp_path / "small.png", Image.fromarray(rgb_array(10, 10)))
    filters = list(warnings.filters)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 px: warning range
    with pytest.raises(ImageError, match="decompression bomb.*MAX_IMAGE_PIXELS"):
        load_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 1600 px: error range
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(path)
    assert load_image(small).size == (10, 10)
    assert warnings.filters == filters


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(tmp_path / "locked.png", Image.fromarray(rgb_array()))

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", denied)
    with pytest.raises(ImageError, match="permission denied") as info:
        load_image(path)
    assert "locked.png" in str(info.value)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_for_real(tmp_path: Path) -> None:
    path = save(tmp_path / "locked.png", Image.fromarray(rgb_array()))
    path.chmod(0)
    try:
        with pytest.raises(ImageError, match="permission denied"):
            load_image(path)
    finally:
        path.chmod(0o644)


def test_error_chains_the_cause(tmp_path: Path) -> None:
    path = tmp_path / "text.png"
    path.write_text("hello")
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert info.value.__cause__ is not None
