import json
import stat
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from provisioning.kits import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    KitVerificationError,
    fingerprint,
    normalize_fingerprint,
    verify_kit,
)

from .conftest import make_ca, pem, read_zip, resign, write_zip

TOP = "hospital-a"


@pytest.fixture
def entries(provisioned) -> dict[str, bytes]:
    return read_zip(provisioned.zip(TOP))


@pytest.fixture
def root_fp(provisioned) -> str:
    return fingerprint(x509.load_pem_x509_certificate((provisioned.kit_dir(TOP) / "startup/rootCA.pem").read_bytes()))


def rejected(path: Path, fragment: str, **kwargs) -> KitVerificationError:
    with pytest.raises(KitVerificationError) as excinfo:
        verify_kit(path, **kwargs)
    assert fragment in str(excinfo.value)
    return excinfo.value


def test_genuine_kit_passes(provisioned, root_fp):
    report = verify_kit(provisioned.zip(TOP), ca_fingerprint=root_fp)
    assert report.participant == TOP
    assert report.role == "site"
    assert report.project == "kits_unit"
    assert report.root_ca_fingerprint == root_fp
    assert report.warnings == []


@pytest.mark.parametrize("spelling", [str.lower, lambda fp: fp.replace(":", ""), lambda fp: f"SHA256:{fp}"])
def test_fingerprint_spellings_accepted(provisioned, root_fp, spelling):
    assert verify_kit(provisioned.zip(TOP), ca_fingerprint=spelling(root_fp)).participant == TOP


def test_every_kit_passes(provisioned, root_fp):
    for path in provisioned.kits.glob("*.zip"):
        assert verify_kit(path, ca_fingerprint=root_fp).participant == path.stem


def test_other_consortium_fingerprint(provisioned, root_fp):
    other = "00" + root_fp[2:]
    error = rejected(provisioned.zip(TOP), "this kit belongs to another consortium", ca_fingerprint=other)
    assert error.root_ca_fingerprint == root_fp


def test_invalid_fingerprint_argument(provisioned):
    with pytest.raises(ValueError, match="invalid SHA-256 fingerprint 'abc'"):
        verify_kit(provisioned.zip(TOP), ca_fingerprint="abc")


def test_normalize_fingerprint_forms():
    digits = "ab" * 32
    assert normalize_fingerprint(":".join(["AB"] * 32)) == digits
    assert normalize_fingerprint(f"sha256 Fingerprint={digits.upper()}") == digits


def test_changed_file_named(tmp_path, entries):
    entries[f"{TOP}/startup/fed_client.json"] += b" "
    rejected(write_zip(tmp_path / "k.zip", entries), "startup/fed_client.json was changed after the kit was issued")


def test_extra_file_named(tmp_path, entries):
    entries[f"{TOP}/local/custom/evil.py"] = b"import os\n"
    rejected(write_zip(tmp_path / "k.zip", entries), "local/custom/evil.py is not listed in the manifest")


def test_missing_file_named(tmp_path, entries):
    del entries[f"{TOP}/local/resources.json"]
    rejected(write_zip(tmp_path / "k.zip", entries), "local/resources.json is listed in the manifest but missing")


def test_changed_manifest_fails_signature(tmp_path, entries):
    manifest = json.loads(entries[f"{TOP}/{MANIFEST_NAME}"])
    manifest["participant"] = "hospital-b"
    entries[f"{TOP}/{MANIFEST_NAME}"] = json.dumps(manifest).encode()
    rejected(write_zip(tmp_path / "k.zip", entries), f"{SIGNATURE_NAME}: the manifest signature does not verify")


def test_replaced_root_ca_fails_signature(tmp_path, entries):
    foreign_cert, _ = make_ca()
    entries[f"{TOP}/startup/rootCA.pem"] = pem(foreign_cert)
    rejected(write_zip(tmp_path / "k.zip", entries), "the manifest signature does not verify with startup/rootCA.pem")


def test_foreign_signed_kit_fails_fingerprint(tmp_path, entries, root_fp):
    foreign_cert, foreign_key = make_ca()
    path = write_zip(tmp_path / "k.zip", resign(entries, TOP, foreign_key, pem(foreign_cert)))
    rejected(path, "startup/client.crt is not signed by this kit's root CA")
    rejected(path, "this kit belongs to another consortium", ca_fingerprint=root_fp)


def test_missing_signature(tmp_path, entries):
    del entries[f"{TOP}/{SIGNATURE_NAME}"]
    rejected(write_zip(tmp_path / "k.zip", entries), f"{SIGNATURE_NAME} is missing")


def test_other_participants_cert(tmp_path, provisioned, entries, root_key):
    entries[f"{TOP}/startup/client.crt"] = (provisioned.kit_dir("hospital-b") / "startup/client.crt").read_bytes()
    path = write_zip(tmp_path / "k.zip", resign(entries, TOP, root_key))
    rejected(path, "startup/client.crt is issued to 'hospital-b', not to the kit's participant 'hospital-a'")


def test_key_not_matching_cert(tmp_path, provisioned, entries, root_key):
    entries[f"{TOP}/startup/client.key"] = (provisioned.kit_dir("hospital-b") / "startup/client.key").read_bytes()
    path = write_zip(tmp_path / "k.zip", resign(entries, TOP, root_key))
    rejected(path, "startup/client.key does not belong to startup/client.crt")


def test_folder_not_participant(tmp_path, entries):
    renamed = {name.replace(f"{TOP}/", "hospital-b/", 1): content for name, content in entries.items()}
    rejected(write_zip(tmp_path / "k.zip", renamed), "kit folder 'hospital-b' does not match")


@pytest.mark.parametrize(
    "name", ["../evil.sh", f"{TOP}/../../evil.sh", "/etc/cron.d/evil", "C:/evil", f"{TOP}\\..\\evil"]
)
def test_path_traversal_rejected(tmp_path, entries, name):
    entries[name] = b"evil"
    rejected(write_zip(tmp_path / "k.zip", entries), "path traversal")


def test_symlink_rejected(tmp_path, entries):
    entries[f"{TOP}/startup/link"] = b"/etc/passwd"
    path = write_zip(tmp_path / "k.zip", entries, modes={f"{TOP}/startup/link": stat.S_IFLNK | 0o777})
    rejected(path, f"zip entry '{TOP}/startup/link' is a symbolic link")


def test_device_file_rejected(tmp_path, entries):
    entries[f"{TOP}/startup/fifo"] = b""
    path = write_zip(tmp_path / "k.zip", entries, modes={f"{TOP}/startup/fifo": stat.S_IFIFO | 0o644})
    rejected(path, "is not a plain file")


def test_two_folders_rejected(tmp_path, entries):
    entries["other/readme.txt"] = b"x"
    rejected(write_zip(tmp_path / "k.zip", entries), "must contain exactly one kit folder")


def test_duplicate_entry_rejected(tmp_path, entries):
    path = write_zip(tmp_path / "k.zip", entries)
    import zipfile

    with warnings.catch_warnings(), zipfile.ZipFile(path, "a") as archive:
        warnings.simplefilter("ignore")
        archive.writestr(f"{TOP}/startup/start.sh", b"evil")
    rejected(path, f"zip entry '{TOP}/startup/start.sh' appears twice")


def test_not_a_zip(tmp_path):
    path = tmp_path / "k.zip"
    path.write_bytes(b"not a zip")
    rejected(path, "is not a readable zip file")


def test_expired_kit(provisioned):
    expires = verify_kit(provisioned.zip(TOP)).expires_at
    rejected(provisioned.zip(TOP), "startup/client.crt expired on", now=expires + timedelta(days=1))


def test_expiry_warning(provisioned):
    expires = verify_kit(provisioned.zip(TOP)).expires_at
    report = verify_kit(provisioned.zip(TOP), now=expires - timedelta(days=10))
    assert len(report.warnings) == 1
    assert "expires in 9 days" in report.warnings[0] or "expires in 10 days" in report.warnings[0]


def test_not_yet_valid(provisioned):
    issued = verify_kit(provisioned.zip(TOP)).issued_at
    rejected(provisioned.zip(TOP), "is not valid before", now=issued - timedelta(days=2))


def test_extract_restores_modes(provisioned, tmp_path):
    report = verify_kit(provisioned.zip(TOP), extract_to=tmp_path)
    kit = tmp_path / TOP
    assert report.extracted_to == kit
    assert stat.S_IMODE((kit / "startup/client.key").stat().st_mode) == 0o600
    assert (kit / "startup/start.sh").stat().st_mode & 0o100
    assert (kit / MANIFEST_NAME).is_file()
    with pytest.raises(FileExistsError, match="already exists"):
        verify_kit(provisioned.zip(TOP), extract_to=tmp_path)


def test_failed_kit_not_extracted(tmp_path, entries):
    entries[f"{TOP}/startup/start.sh"] = b"evil"
    rejected(write_zip(tmp_path / "k.zip", entries), "startup/start.sh was changed", extract_to=tmp_path / "out")
    assert not (tmp_path / "out").exists()
