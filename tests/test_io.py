import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import CASES, SARCOMA, assert_one_line_error, locale_kept, run_cli, write_dicom_series

from tumorfm.data.io import Geometry, read_volume, write_volume
from tumorfm.errors import TumorFMError

REAL_CASES = sorted(p for p in CASES.iterdir() if p.name.endswith((".nrrd", ".nii.gz")))


def test_real_cases_are_present():
    assert len(REAL_CASES) >= 7


@pytest.mark.parametrize("path", REAL_CASES, ids=lambda p: p.name)
def test_round_trip_same_format_is_identical(path, tmp_path):
    volume = read_volume(path)
    out = write_volume(volume.array, volume.geometry, tmp_path / path.name)
    again = read_volume(out)
    assert again.array.dtype == volume.array.dtype
    np.testing.assert_array_equal(again.array, volume.array)
    assert again.geometry == volume.geometry


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".mhd", ".nrrd"])
def test_round_trip_across_formats(suffix, tmp_path):
    volume = read_volume(CASES / "brain1_image.nrrd")
    again = read_volume(write_volume(volume.array, volume.geometry, tmp_path / f"x{suffix}"))
    np.testing.assert_array_equal(again.array, volume.array)
    assert again.geometry.size == volume.geometry.size
    np.testing.assert_allclose(again.geometry.spacing, volume.geometry.spacing, rtol=1e-6)
    np.testing.assert_allclose(again.geometry.origin, volume.geometry.origin, atol=1e-4)
    np.testing.assert_allclose(again.geometry.direction, volume.geometry.direction, atol=1e-6)


def test_label_written_with_reference_geometry(tmp_path):
    image = read_volume(CASES / "totalseg_example_ct_sm.nii.gz")
    label = (image.array > 100).astype(np.uint8)
    again = read_volume(write_volume(label, image.geometry, tmp_path / "mask.nii.gz"))
    assert again.geometry == image.geometry
    np.testing.assert_array_equal(again.array, label)


def test_dicom_series_folder(tmp_path):
    """Same voxels at the same physical points. brain1's direction is left-handed, which DICOM
    cannot store, so the series comes back with its slice axis reversed: compare in patient
    space."""
    volume = read_volume(CASES / "brain1_image.nrrd")
    write_dicom_series(volume, tmp_path / "series", modality="MR")
    again = read_volume(tmp_path / "series")
    np.testing.assert_allclose(again.geometry.spacing, volume.geometry.spacing, rtol=1e-4)
    reference = volume.geometry.apply_to(sitk.GetImageFromArray(volume.array))
    moved = again.geometry.apply_to(sitk.GetImageFromArray(again.array))
    aligned = sitk.Resample(moved, reference, sitk.Transform(), sitk.sitkNearestNeighbor, -1)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(aligned), volume.array)


def _series(tmp_path, name: str = "series") -> Path:
    """STS_025 (47 slices, 3.27 mm apart) as a DICOM series, file imNNN.dcm holding slice 48-NNN."""
    volume = read_volume(SARCOMA / "imagesTr" / "STS_025_0000.nii.gz")
    write_dicom_series(volume, tmp_path / name)
    return tmp_path / name


def test_dicom_series_with_a_missing_slice_is_refused(tmp_path):
    """ITK reads it with a warning, spacing the slices evenly: every slice past the gap would
    sit 3 mm from where it was scanned. (A scan read through view, predict, refine... alike.)"""
    folder = _series(tmp_path)
    (folder / "im020.dcm").unlink()
    result = run_cli("view", folder, "--export", tmp_path / "page.html")
    assert_one_line_error(result, "slice positions jump by 6.54 mm", "missing slices")
    assert not (tmp_path / "page.html").exists()


def test_dicom_series_with_a_slice_twice_is_refused(tmp_path):
    folder = _series(tmp_path)
    image = sitk.ReadImage(str(folder / "im020.dcm"))
    image.SetMetaData("0008|0018", "1.2.826.0.1.3680043.2.1125.1.54321.999")  # another instance
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(folder / "im020b.dcm"))
    with locale_kept():
        writer.Execute(image)
    with pytest.raises(TumorFMError, match="two slices at one position"):
        read_volume(folder)


def test_folder_with_two_dicom_series_is_refused(tmp_path):
    folder = _series(tmp_path)
    other = _series(tmp_path, "other")
    for path in other.iterdir():  # the same slices under another series UID
        image = sitk.ReadImage(str(path))
        image.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1.777")
        image.SetMetaData("0008|0018", image.GetMetaData("0008|0018") + ".7")
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"b{path.name}"))
        with locale_kept():
            writer.Execute(image)
    with pytest.raises(TumorFMError, match="holds 2 DICOM series; put one series per folder"):
        read_volume(folder)


def test_write_needs_matching_geometry(tmp_path):
    geometry = Geometry((4, 5, 6), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(ValueError, match="does not match"):
        write_volume(np.zeros((4, 5, 6)), geometry, tmp_path / "x.nii.gz")


# Bad input: one line naming the file and the problem, never a traceback.


def _corrupt_gzip(tmp_path):
    data = bytearray((CASES / "totalseg_example_seg.nii.gz").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\x00" * 64
    path = tmp_path / "corrupt.nii.gz"
    path.write_bytes(bytes(data))
    return path


def _truncated(tmp_path):
    path = tmp_path / "truncated.nrrd"
    path.write_bytes((CASES / "brain1_image.nrrd").read_bytes()[:50_000])
    return path


def _truncated_gzip(tmp_path):
    path = tmp_path / "truncated.nii.gz"
    path.write_bytes((CASES / "totalseg_example_ct_sm.nii.gz").read_bytes()[:20_000])
    return path


def _truncated_nifti(tmp_path):
    raw = gzip.decompress((CASES / "totalseg_example_ct_sm.nii.gz").read_bytes())
    path = tmp_path / "truncated.nii"
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _bad_dicom_folder(tmp_path):
    folder = tmp_path / "dicom"
    folder.mkdir()
    for i in range(3):
        (folder / f"IM{i}.dcm").write_bytes(b"DICM" + bytes(500))
    return folder


def _not_gzip(tmp_path):
    path = tmp_path / "plain.nii.gz"
    path.write_bytes(gzip.decompress((CASES / "totalseg_example_seg.nii.gz").read_bytes())[:100])
    return path


@pytest.mark.parametrize(
    "make, problem",
    [
        (_corrupt_gzip, "corrupt or truncated gzip"),
        (_truncated_gzip, "corrupt or truncated gzip"),
        (_truncated, "cannot read volume"),
        (_truncated_nifti, "truncated NIfTI"),
        (_bad_dicom_folder, "DICOM"),
        (_not_gzip, "gzip"),
        (lambda tmp: tmp / "missing.nii.gz", "no such file"),
    ],
)
def test_bad_input_is_one_line(make, problem, tmp_path):
    path = make(tmp_path)
    with pytest.raises(TumorFMError) as caught:
        read_volume(path)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message and problem in message


def test_unwritable_output_folder(tmp_path):
    volume = read_volume(CASES / "breast1_label.nrrd")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(TumorFMError, match="cannot write"):
        write_volume(volume.array, volume.geometry, blocker / "out.nii.gz")


def test_failed_write_keeps_the_existing_file(tmp_path):
    volume = read_volume(CASES / "breast1_label.nrrd")
    target = write_volume(volume.array, volume.geometry, tmp_path / "keep.nrrd")
    before = target.read_bytes()
    with pytest.raises(ValueError):
        write_volume(volume.array[:-1], volume.geometry, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.nrrd"]


def test_cli_reports_corrupt_file_in_check(tmp_path, sarcoma):
    shutil.copy(_corrupt_gzip(tmp_path), sarcoma / "labelsTr" / "STS_019.nii.gz")
    result = run_cli("check", sarcoma)
    assert result.returncode == 1
    assert "STS_019.nii.gz: corrupt or truncated gzip" in result.stdout
