"""The ``sdmad`` command line run as ``python -m sdmad_monai`` in a subprocess: success writes the SR, bad input
and an unreachable PACS exit non-zero with a one-line error, the demo study writer."""

from __future__ import annotations

import socket
import subprocess
import sys
import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest

from sdmad_monai.deploy.demo import write_dicom_series
from sdmad_monai.deploy.rules import explain_series
from sdmad_monai.networks import SignDrivenDetector

STUDY, AXIAL, CORONAL = "1.2.826.0.1.3680043.8.498.30", "1.2.826.0.1.3680043.8.498.31", "1.2.826.0.1.3680043.8.498.32"


def sdmad(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sdmad_monai", *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sign selection kept no prompt")
        return SignDrivenDetector.from_preset("tiny").save(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_study")
    volume = np.random.default_rng(0).uniform(0, 1000, (32, 32, 12))
    write_dicom_series(volume, folder / "ax", "axial", STUDY, AXIAL, attributes={"BodyPartExamined": "BRAIN"})
    write_dicom_series(volume, folder / "cor", "coronal", STUDY, CORONAL)
    return folder


def test_process_folder(tmp_path, model, study):
    out = tmp_path / "out"
    run = sdmad(
        "process_folder",
        "--input_dir",
        str(study),
        "--output_dir",
        str(out),
        "--model",
        str(model),
        "--slices",
        "0,5,10",
    )
    assert run.returncode == 0, run.stderr
    sr = out / f"sdmad_sr_{AXIAL}.dcm"
    assert str(sr) in run.stdout.splitlines()
    assert sorted(p.name for p in out.iterdir()) == [sr.name, f"sdmad_sr_{AXIAL}.json"]
    assert pydicom.dcmread(sr).StudyInstanceUID == STUDY
    assert f"Series {CORONAL}" in run.stderr and "skipped" in run.stderr


def error_line(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 1
    lines = [line for line in run.stderr.splitlines() if line.startswith("sdmad: error:")]
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    return lines[0]


def test_failures(tmp_path, model, study):
    assert "Model checkpoint" in error_line(
        sdmad("process_folder", "--input_dir", str(study), "--output_dir", str(tmp_path), "--model", "missing.pt")
    )
    assert "Input folder" in error_line(
        sdmad(
            "process_folder",
            "--input_dir",
            str(tmp_path / "nope"),
            "--output_dir",
            str(tmp_path),
            "--model",
            str(model),
        )
    )
    line = error_line(
        sdmad(
            "process_folder",
            "--input_dir",
            str(study / "cor"),
            "--output_dir",
            str(tmp_path / "out"),
            "--model",
            str(model),
        )
    )
    assert "No series" in line and "orientation is coronal" in line
    assert not (tmp_path / "out").exists()
    # a bad site file (series rules, finding codes) is named before anything is read
    for option, text, expected in [
        ("--rules", '{"modality": "MR"}', "unknown key"),
        ("--finding_codes",
         '{"categories": {"Craniotomy": {"finding": {"scheme": "SCT", "value": "1", "meaning": "x"}}}}',
         "'1' is not a SNOMED CT concept identifier"),
    ]:  # fmt: skip
        bad = tmp_path / f"{option.strip('-')}.json"
        bad.write_text(text)
        line = error_line(
            sdmad(
                "process_folder",
                "--input_dir",
                str(study),
                "--output_dir",
                str(tmp_path / "out"),
                "--model",
                str(model),
                option,
                str(bad),
            )
        )
        assert str(bad) in line and expected in line
    line = error_line(
        sdmad(
            "process_folder",
            "--input_dir",
            str(study),
            "--output_dir",
            str(tmp_path / "out"),
            "--model",
            str(model),
            "--target_sensitivity",
            "1.5",
        )
    )
    assert "--target_sensitivity 1.5" in line and "(0, 1]" in line
    assert not (tmp_path / "out").exists()


def test_mistyped_options_are_refused_before_any_work(tmp_path, model, study):
    """``fire`` reads options only after the command ran: ``--retry 0`` used to store the SR, then exit 2."""
    out = tmp_path / "out"
    line = error_line(
        sdmad(
            "process_folder", "--input_dir", str(study), "--output_dir", str(out), "--model", str(model), "--slice", "0"
        )
    )
    assert "unknown option --slice" in line and "did you mean --slices?" in line
    line = error_line(
        sdmad(
            "process_study",
            "--url",
            "http://127.0.0.1:9/dicom-web",
            "--study_uid",
            STUDY,
            "--model",
            str(model),
            "--retry",
            "0",
        )
    )
    assert "unknown option --retry" in line and "did you mean --retries?" in line
    line = error_line(
        sdmad(
            "process_study",
            "--url",
            "http://127.0.0.1:9/dicom-web",
            "--study_uid",
            STUDY,
            "--model",
            str(model),
            "--retries",
            "abc",
        )
    )
    assert "--retries 'abc' is not a valid int value" in line
    assert "did you mean 'process_folder'" in error_line(sdmad("proces_folder", "--input_dir", str(study)))
    assert not out.exists()


def test_help_lists_commands():
    run = sdmad("--help")
    text = run.stdout + run.stderr
    assert all(command in text for command in ("process_folder", "process_study", "write_demo_study"))


def test_process_study_failures(tmp_path, model):
    """PACS faults that need no PACS: nothing listening (bounded retries, then one error line), bad arguments.
    The round trip against a real Orthanc is in tests/deploy/test_dicomweb.py."""
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/dicom-web"
    run = sdmad(
        "process_study",
        "--url",
        url,
        "--study_uid",
        STUDY,
        "--model",
        str(model),
        "--retries",
        "2",
        "--backoff",
        "0.01",
    )
    line = error_line(run)
    assert f"DICOMweb server {url} is not reachable" in line and "after 3 attempt(s)" in line
    assert run.stderr.count("retrying in") == 2
    assert "Model checkpoint" in error_line(
        sdmad("process_study", "--url", url, "--study_uid", STUDY, "--model", str(tmp_path / "missing.pt"))
    )
    assert "is not a StudyInstanceUID" in error_line(
        sdmad("process_study", "--url", url, "--study_uid", "1.20", "--model", str(model))  # fire reads a float
    )
    assert "is not an http(s) URL" in error_line(
        sdmad("process_study", "--url", "127.0.0.1:8042", "--study_uid", STUDY, "--model", str(model))
    )


def test_write_demo_study(tmp_path):
    data = np.arange(24 * 20 * 6, dtype=np.float32).reshape(24, 20, 6)
    affine = np.diag([-2.0, 2.0, 5.0, 1.0])  # 2 x 2 mm in-plane, 5 mm between axial slices
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "volume.nii.gz")
    run = sdmad("write_demo_study", "--volume", str(tmp_path / "volume.nii.gz"), "--output_dir", str(tmp_path / "a"))
    assert run.returncode == 0, run.stderr
    printed = dict(line.split(":", 1) for line in run.stdout.splitlines())
    files = sorted((tmp_path / "a").iterdir())
    assert [f.name for f in files] == [f"IM{k:04d}.dcm" for k in range(6)] and printed["files"].strip() == "6"
    headers = [pydicom.dcmread(f) for f in files]
    assert {h.StudyInstanceUID for h in headers} == {printed["study_instance_uid"].strip()}
    assert explain_series({"s": headers}) == {"s": None}  # an axial brain MR series for the shipped rules
    assert [float(h.ImagePositionPatient[2]) for h in headers] == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]
    assert np.array_equal(headers[2].pixel_array.T, data[:, :, 2])
    # the same volume again gives the same study; a non-empty folder is refused
    again = sdmad("write_demo_study", "--volume", str(tmp_path / "volume.nii.gz"), "--output_dir", str(tmp_path / "b"))
    assert again.stdout.splitlines()[0] == run.stdout.splitlines()[0]
    assert "is not empty" in error_line(
        sdmad("write_demo_study", "--volume", str(tmp_path / "volume.nii.gz"), "--output_dir", str(tmp_path / "a"))
    )
    assert "Volume" in error_line(
        sdmad("write_demo_study", "--volume", str(tmp_path / "missing.nii.gz"), "--output_dir", str(tmp_path / "c"))
    )


def test_unusable_output_folder_device_and_uid_are_refused_first(tmp_path, model, study):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    line = error_line(
        sdmad("process_folder", "--input_dir", str(study), "--output_dir", str(a_file / "out"), "--model", str(model))
    )
    assert "file.txt is a file, not a folder" in line
    import torch

    if not torch.cuda.is_available():
        line = error_line(
            sdmad(
                "process_folder",
                "--input_dir",
                str(study),
                "--output_dir",
                str(tmp_path / "o"),
                "--model",
                str(model),
                "--device",
                "cuda",
            )
        )
        assert "--device cuda: no CUDA device is available" in line
    volume = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).uniform(0, 1, (8, 8, 4)).astype(np.float32), np.eye(4)), volume)
    line = error_line(
        sdmad(
            "write_demo_study",
            "--volume",
            str(volume),
            "--output_dir",
            str(tmp_path / "d"),
            "--study_uid",
            "not a uid!",
        )
    )
    assert "is not a valid DICOM UID" in line and not (tmp_path / "d").exists()


def test_sigterm_removes_temporary_folders(tmp_path):
    """process_study keeps the retrieved study in a temporary folder: SIGTERM must not leave it behind."""
    import signal
    from pathlib import Path

    code = (
        "import tempfile, time\n"
        "from sdmad_monai.cli import exit_on_sigterm\n"
        "exit_on_sigterm()\n"
        f"with tempfile.TemporaryDirectory(prefix='sdmad_dicomweb_', dir={str(tmp_path)!r}) as folder:\n"
        "    open(folder + '/IM0001.dcm', 'w').close()\n"
        "    print(folder, flush=True)\n"
        "    time.sleep(60)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    folder = Path(process.stdout.readline().strip())
    assert folder.is_dir()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 128 + signal.SIGTERM
    assert not folder.exists()


def test_missing_pacs_extra_is_one_line_naming_the_extra(tmp_path, model, study):
    """Without highdicom (the `pacs` extra) the DICOM commands end with one line that says what to install."""
    code = (
        "import sys; sys.modules['highdicom'] = None; sys.argv = ['sdmad'] + sys.argv[1:]\n"
        "from sdmad_monai.cli import main; main()"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, "process_folder", "--input_dir", str(study), "--output_dir", str(tmp_path),
         "--model", str(model)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    line = error_line(run)
    assert "needs the highdicom package" in line and '".[pacs]"' in line
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_bug_prints_its_whole_traceback_redacted(monkeypatch, capsys):
    """A non-user error keeps its traceback, but a URL's user info and an Authorization value never reach stderr."""
    from sdmad_monai import cli

    def broken(command):
        raise RuntimeError(
            "GET https://alice:s3cret-pw@pacs.example.org/dicom-web failed; sent Authorization: Bearer tok3n-abcdefgh"
        )

    monkeypatch.setattr(cli, "_check_options", broken)
    with pytest.raises(SystemExit) as ended:
        cli.main(["process_folder"])
    assert ended.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in broken" in err
    assert "RuntimeError: GET https://***@pacs.example.org/dicom-web failed" in err
    assert "s3cret-pw" not in err and "tok3n-abcdefgh" not in err and "alice" not in err
