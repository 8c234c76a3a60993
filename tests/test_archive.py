"""Installing the encrypted ATLAS archive: decryption, download, safety, layout.

Everything is local: a small ATLAS-like release is tarred, gzipped and encrypted
in the OpenSSL format (by our encryptor, and by the ``openssl`` command when it is
installed), then served from an HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import csv
import errno
import getpass
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas_ramp import archive, bids
from atlas_ramp.archive import (
    ChecksumError,
    CorruptArchiveError,
    UnsafeArchiveError,
    WrongPasswordError,
    decrypt_openssl_stream,
    evp_bytes_to_key,
    extract_tar_stream,
    install_atlas,
    resolve_password,
    unpack_archive_stream,
)
from atlas_ramp.bids import DataError, find_subjects
from atlas_ramp.download import main
from atlas_ramp.testing import archives as testing_archives
from atlas_ramp.testing.archives import (
    encrypt_openssl_file,
    encrypt_openssl_stream,
    make_tar_gz,
    tar_gz_bytes,
)

PASSWORD = "correct horse battery staple"
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl not installed")


# --------------------------------------------------------------------------
# Helpers: a small release, its archive, an HTTP server
# --------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def openssl_encrypt(source: Path, destination: Path, *extra: str) -> Path:
    subprocess.run(
        [OPENSSL, "enc", "-aes-256-cbc", "-md", "sha256", "-salt", *extra]
        + ["-pass", f"pass:{PASSWORD}", "-in", str(source), "-out", str(destination)],
        check=True,
        capture_output=True,
    )
    return destination


def encrypted_bytes(plain: bytes, password: str = PASSWORD, base64=True) -> bytes:
    return testing_archives.encrypted_bytes(plain, password, base64=base64)


@pytest.fixture(scope="module")
def release(release_tree, tmp_path_factory):
    """The release tree, its .tar.gz and its encrypted archive (built once)."""
    tree = release_tree
    root = tmp_path_factory.mktemp("archive")
    tar_gz = make_tar_gz(tree, root / "atlas.tar.gz", "ATLAS_2")
    encrypted = encrypt_openssl_file(
        tar_gz, root / archive.ATLAS_ARCHIVE_NAME, PASSWORD, salt=b"12345678"
    )
    return {
        "tree": tree,
        "tar_gz": tar_gz,
        "archive": encrypted,
        "sha256": sha256_of(encrypted),
        "labelled": [s.subject_id for s in find_subjects(tree / "Training")],
        "unlabelled": [s.subject_id for s in find_subjects(tree / "Testing")],
    }


class _ArchiveHandler(BaseHTTPRequestHandler):
    """Serves ``server.payload``; supports ``Range: bytes=N-``; can cut once."""

    def do_GET(self):
        server = self.server
        range_header = self.headers.get("Range")
        server.range_headers.append(range_header)
        if self.path != "/" + archive.ATLAS_ARCHIVE_NAME:
            self.send_error(404)
            return
        payload, start = server.payload, 0
        if range_header and not server.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", range_header)[1])
            if start >= len(payload):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(payload)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header(
                "Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}"
            )
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(payload) - start))
        self.end_headers()
        body = payload[start:]
        if server.drop_after is not None and start < server.drop_after:
            # Announce the whole body, send part of it, hang up: a cut connection.
            self.wfile.write(body[: server.drop_after - start])
            server.drop_after = None
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    """A local HTTP server; set ``.payload`` (and ``.drop_after``, ``.ignore_range``).

    ``server.url`` is the archive's URL; ``server.range_headers`` logs requests.
    """
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(archive.fetch, "RETRY_BACKOFF_S", 0.0)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ArchiveHandler)
    httpd.daemon_threads = True
    httpd.payload, httpd.drop_after, httpd.ignore_range = b"", None, False
    httpd.range_headers = []
    host, port = httpd.server_address
    httpd.url = f"http://{host}:{port}/{archive.ATLAS_ARCHIVE_NAME}"
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (downloads aside) with its content."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and archive.DOWNLOADS_DIR_NAME not in path.parts
    }


@pytest.fixture
def existing_data(tmp_path, release):
    """A good ``data/``: the release's Training as ``train`` and ``test``."""
    data = tmp_path / "data"
    shutil.copytree(release["tree"] / "Training", data / "train")
    shutil.copytree(release["tree"] / "Training", data / "test")
    (data / "notes.txt").write_text("mine")
    return data


def assert_nothing_left_behind(output: Path):
    """No temporary folder of ours beside the output."""
    assert not list(output.parent.glob(f".{output.name}.atlas-*"))


def read_manifest(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file, delimiter="\t"))


def assert_installed(output: Path, release: dict) -> None:
    train, test = find_subjects(output / "train"), find_subjects(output / "test")
    unlabelled = find_subjects(output / "unlabelled")
    assert all(s.mask_path is not None for s in train + test)
    assert all(s.mask_path is None for s in unlabelled)
    train_ids = {s.subject_id for s in train}
    test_ids = {s.subject_id for s in test}
    assert not train_ids & test_ids
    assert sorted(train_ids | test_ids) == release["labelled"]
    assert [s.subject_id for s in unlabelled] == release["unlabelled"]
    # Every cohort keeps training subjects (cohort-stratified hold-out).
    assert {s.cohort for s in train} == {bids.cohort_of(i) for i in release["labelled"]}
    # The ATLAS layout is kept: <split>/R001/sub-.../ses-1/anat/<file>.
    for subject in train + test + unlabelled:
        split_dir = output / subject.t1w_path.relative_to(output).parts[0]
        assert subject.t1w_path.parent == bids.anat_dir(split_dir, subject.subject_id)
        original = release["tree"].rglob(subject.t1w_path.name)
        assert subject.t1w_path.read_bytes() == next(original).read_bytes()
    rows = read_manifest(output / "split_manifest.tsv")
    expected = {(s.subject_id, s.cohort, "train") for s in train}
    expected |= {(s.subject_id, s.cohort, "test") for s in test}
    expected |= {(s.subject_id, s.cohort, "unlabelled") for s in unlabelled}
    assert {(r["subject"], r["cohort"], r["split"]) for r in rows} == expected
    for split in ("train", "test", "unlabelled"):
        description = json.loads(
            (output / split / "dataset_description.json").read_text()
        )
        assert description["BIDSVersion"] and split in description["Name"]
    assert_nothing_left_behind(output)


# --------------------------------------------------------------------------
# The OpenSSL format
# --------------------------------------------------------------------------


@needs_openssl
def test_key_derivation_matches_openssl():
    printed = subprocess.run(
        [OPENSSL, "enc", "-aes-256-cbc", "-md", "sha256", "-P", "-S"]
        + ["0102030405060708", "-pass", f"pass:{PASSWORD}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    values = dict(re.findall(r"^(\w+)\s*=\s*([0-9A-F]+)$", printed, re.MULTILINE))
    key, iv = evp_bytes_to_key(PASSWORD.encode(), bytes(range(1, 9)))
    assert key.hex().upper() == values["key"]
    assert iv.hex().upper() == values["iv"]


@settings(max_examples=60, deadline=None)
@given(
    payload=st.binary(max_size=400),
    piece_size=st.integers(min_value=1, max_value=97),
    base64=st.booleans(),
)
def test_decryption_inverts_encryption_whatever_the_chunking(
    payload, piece_size, base64
):
    encrypted = encrypted_bytes(payload, base64=base64)
    pieces = [
        encrypted[i : i + piece_size] for i in range(0, len(encrypted), piece_size)
    ]
    assert b"".join(decrypt_openssl_stream(pieces, PASSWORD)) == payload


def test_base64_output_has_openssl_line_length():
    lines = encrypted_bytes(bytes(1000)).split(b"\n")
    assert lines[-1] == b""
    assert {len(line) for line in lines[:-2]} == {64}
    assert lines[0].startswith(archive.BASE64_SALT_HEADER)


@needs_openssl
@pytest.mark.parametrize("base64", [True, False])
def test_we_decrypt_what_openssl_encrypts(release, tmp_path, base64):
    made = openssl_encrypt(release["tar_gz"], tmp_path / "x.enc", *(["-a"] * base64))
    data = made.read_bytes()
    chunks = [data[i : i + 1000] for i in range(0, len(data), 1000)]
    assert b"".join(decrypt_openssl_stream(chunks, PASSWORD)) == (
        release["tar_gz"].read_bytes()
    )


@needs_openssl
def test_openssl_decrypts_what_we_encrypt(release, tmp_path):
    decrypted = tmp_path / "x.tar.gz"
    subprocess.run(
        [OPENSSL, "enc", "-d", "-aes-256-cbc", "-md", "sha256", "-a"]
        + ["-pass", f"pass:{PASSWORD}", "-in", str(release["archive"])]
        + ["-out", str(decrypted)],
        check=True,
        capture_output=True,
    )
    assert decrypted.read_bytes() == release["tar_gz"].read_bytes()


def test_wrong_password_fails_at_the_first_block(release, tmp_path):
    data = release["archive"].read_bytes()
    pulled = []

    def pieces():
        for start in range(0, len(data), 256):
            pulled.append(start)
            yield data[start : start + 256]

    with pytest.raises(WrongPasswordError, match="Wrong password"):
        unpack_archive_stream(pieces(), "not the password", tmp_path / "out")
    assert len(pulled) <= 2 < len(data) // 256


def test_a_wrong_password_is_also_caught_by_the_padding():
    # Without the gzip check (decryption alone), the last block gives it away.
    encrypted = b"".join(
        encrypt_openssl_stream([bytes(100)], PASSWORD, salt=b"saltsalt")
    )
    with pytest.raises(WrongPasswordError, match="invalid padding"):
        b"".join(decrypt_openssl_stream([encrypted], "not the password"))


def test_not_an_openssl_file_is_refused():
    with pytest.raises(CorruptArchiveError, match="not an OpenSSL-encrypted file"):
        list(decrypt_openssl_stream([b"<html>Access denied</html>"], PASSWORD))


# --------------------------------------------------------------------------
# The whole pipeline, through the command line
# --------------------------------------------------------------------------


def test_install_from_a_local_archive_with_the_checksum(
    release, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(archive.install, "ATLAS_SHA256", release["sha256"])
    monkeypatch.setenv("ATLAS_PASSWORD", PASSWORD)
    output = tmp_path / "data"
    argv = ["--atlas", "--archive", str(release["archive"]), "--output", str(output)]
    assert main([*argv, "--quiet"]) == 0
    assert_installed(output, release)
    # Run again: refused without --force, the data untouched.
    before = snapshot(output)
    assert main([*argv, "--quiet"]) == 1
    assert "--force" in capsys.readouterr().err
    assert snapshot(output) == before
    # Another seed with --force gives another split of the same subjects.
    assert main([*argv, "--quiet", "--force", "--seed", "3"]) == 0
    assert_installed(output, release)
    assert snapshot(output) != before


def test_install_by_download(release, tmp_path, server, monkeypatch):
    server.payload = release["archive"].read_bytes()
    monkeypatch.setattr(archive.install, "ATLAS_SHA256", release["sha256"])
    monkeypatch.setenv("ATLAS_PASSWORD", PASSWORD)
    output = tmp_path / "data"
    argv = ["--atlas", "--url", server.url, "--output", str(output), "--quiet"]
    assert main(argv) == 0
    assert_installed(output, release)
    assert server.range_headers == [None]
    assert not (output / archive.DOWNLOADS_DIR_NAME).exists()  # cleaned up


@needs_openssl
def test_install_an_openssl_made_archive_with_a_deeper_top_folder(
    release, tmp_path, monkeypatch
):
    tar_gz = make_tar_gz(release["tree"], tmp_path / "x.tar.gz", "ATLAS_R2.0/ATLAS_2")
    made = openssl_encrypt(tar_gz, tmp_path / "x.enc", "-a")
    monkeypatch.setenv("ATLAS_PASSWORD", "not this one: the file comes first")
    password_file = tmp_path / "password.txt"
    password_file.write_text(PASSWORD + "\n")
    output = tmp_path / "data"
    argv = ["--atlas", "--archive", str(made), "--output", str(output)]
    argv += ["--password-file", str(password_file), "--skip-checksum", "--quiet"]
    assert main(argv) == 0
    assert_installed(output, release)


def test_a_plain_tar_gz_is_accepted(release, tmp_path):
    output = tmp_path / "data"
    install_atlas(
        output,
        archive=release["tar_gz"],
        password=PASSWORD,
        skip_checksum=True,
        progress=False,
    )
    assert_installed(output, release)


def test_extra_files_of_the_archive_are_kept_aside(release, tmp_path):
    tree = tmp_path / "ATLAS_2"
    shutil.copytree(release["tree"], tree)
    (tree / "Training" / "metadata.csv").write_text("subject,site\n")
    tar_gz = make_tar_gz(tree, tmp_path / "x.tar.gz", "ATLAS_2")
    output = tmp_path / "data"
    install_atlas(output, tar_gz, password=PASSWORD, skip_checksum=True, progress=False)
    assert_installed(output, release)
    assert (output / "extras" / "ATLAS_2" / "Training" / "metadata.csv").exists()


# --------------------------------------------------------------------------
# Download: cuts, resume, servers without ranges
# --------------------------------------------------------------------------


def test_a_cut_connection_is_resumed_within_the_run(release, tmp_path, server):
    server.payload = release["archive"].read_bytes()
    cut = len(server.payload) // 3
    server.drop_after = cut
    output = tmp_path / "data"
    install_atlas(
        output,
        url=server.url,
        password=PASSWORD,
        expected_sha256=release["sha256"],
        progress=False,
    )
    assert_installed(output, release)
    assert server.range_headers == [None, f"bytes={cut}-"]


def test_an_interrupted_download_resumes_on_the_next_run(
    release, tmp_path, server, existing_data
):
    server.payload = release["archive"].read_bytes()
    cut = len(server.payload) // 2
    server.drop_after = cut
    before = snapshot(existing_data)
    options = dict(
        url=server.url,
        password=PASSWORD,
        expected_sha256=release["sha256"],
        force=True,
        progress=False,
    )
    with pytest.raises(DataError, match="run the same command again to resume"):
        install_atlas(existing_data, retries=0, **options)
    part = existing_data / ".downloads" / f"{archive.ATLAS_ARCHIVE_NAME}.part"
    assert part.read_bytes() == server.payload[:cut]
    assert snapshot(existing_data) == before
    assert_nothing_left_behind(existing_data)

    install_atlas(existing_data, **options)
    assert server.range_headers[-1] == f"bytes={cut}-"
    assert_installed(existing_data, release)
    assert (existing_data / "notes.txt").read_text() == "mine"
    assert not part.exists()


def test_a_server_ignoring_ranges_restarts_the_download(release, tmp_path, server):
    server.payload = release["archive"].read_bytes()
    server.ignore_range = True
    output = tmp_path / "data"
    part = output / ".downloads" / f"{archive.ATLAS_ARCHIVE_NAME}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"stale bytes from somewhere else")
    install_atlas(
        output,
        url=server.url,
        password=PASSWORD,
        expected_sha256=release["sha256"],
        progress=False,
    )
    assert server.range_headers == [f"bytes={len(b'stale bytes from somewhere else')}-"]
    assert_installed(output, release)


def test_a_complete_part_file_is_not_downloaded_again(release, tmp_path, server):
    server.payload = release["archive"].read_bytes()
    output = tmp_path / "data"
    part = output / ".downloads" / f"{archive.ATLAS_ARCHIVE_NAME}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(server.payload)
    install_atlas(
        output,
        url=server.url,
        password=PASSWORD,
        expected_sha256=release["sha256"],
        progress=False,
        keep_download=True,
    )
    assert server.range_headers == [f"bytes={len(server.payload)}-"]  # got a 416
    assert_installed(output, release)
    assert (part.parent / archive.ATLAS_ARCHIVE_NAME).read_bytes() == server.payload


def test_a_missing_file_on_the_server_is_a_clear_error(tmp_path, server):
    with pytest.raises(DataError, match="404"):
        install_atlas(
            tmp_path / "data",
            url=server.url + ".nope",
            password=PASSWORD,
            progress=False,
        )
    assert_nothing_left_behind(tmp_path / "data")


# --------------------------------------------------------------------------
# Failures lose nothing
# --------------------------------------------------------------------------


def install_over(existing: Path, source: Path, **options):
    options = {"password": PASSWORD, "progress": False, "force": True, **options}
    install_atlas(existing, archive=source, **options)


def test_wrong_password_leaves_existing_data_untouched(
    release, existing_data, capsys, monkeypatch
):
    before = snapshot(existing_data)
    monkeypatch.setenv("ATLAS_PASSWORD", "wrong")
    argv = ["--atlas", "--archive", str(release["archive"]), "--force", "--quiet"]
    assert main([*argv, "--output", str(existing_data)]) == 1
    assert "Wrong password" in capsys.readouterr().err
    assert snapshot(existing_data) == before
    assert_nothing_left_behind(existing_data)


def test_checksum_mismatch_installs_nothing(release, existing_data):
    before = snapshot(existing_data)
    with pytest.raises(ChecksumError, match="--skip-checksum"):
        install_over(existing_data, release["archive"], expected_sha256="0" * 64)
    assert snapshot(existing_data) == before
    assert_nothing_left_behind(existing_data)


def test_checksum_mismatch_discards_the_download(release, existing_data, server):
    server.payload = release["archive"].read_bytes()
    with pytest.raises(ChecksumError, match="download it afresh") as raised:
        install_atlas(
            existing_data,
            url=server.url,
            password=PASSWORD,
            force=True,
            expected_sha256="0" * 64,
            progress=False,
        )
    # The file is gone: no advice to download it by hand or keep it.
    assert "Download it again" not in str(raised.value)
    assert not (
        existing_data
        / archive.DOWNLOADS_DIR_NAME
        / (archive.ATLAS_ARCHIVE_NAME + ".part")
    ).exists()


@pytest.mark.parametrize("keep", [0.3, 0.7, 0.999])
@pytest.mark.parametrize("checksum", [True, False])
def test_truncated_archive_installs_nothing(
    release, existing_data, tmp_path, keep, checksum
):
    data = release["archive"].read_bytes()
    truncated = tmp_path / "truncated.enc"
    truncated.write_bytes(data[: int(len(data) * keep)])
    before = snapshot(existing_data)
    options = (
        {"expected_sha256": release["sha256"]} if checksum else {"skip_checksum": True}
    )
    with pytest.raises(DataError) as raised:
        install_over(existing_data, truncated, **options)
    if checksum:
        assert isinstance(raised.value, ChecksumError)
    assert re.search("truncated|damaged|wrong", str(raised.value))
    assert snapshot(existing_data) == before
    assert_nothing_left_behind(existing_data)


def test_damaged_archive_installs_nothing(release, existing_data, tmp_path):
    data = bytearray(release["archive"].read_bytes())
    middle = len(data) // 2
    data[middle] = ord("A") if data[middle] != ord("A") else ord("B")
    damaged = tmp_path / "damaged.enc"
    damaged.write_bytes(bytes(data))
    before = snapshot(existing_data)
    with pytest.raises(CorruptArchiveError, match="damaged"):
        install_over(existing_data, damaged, skip_checksum=True)
    assert snapshot(existing_data) == before
    assert_nothing_left_behind(existing_data)


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = ""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


_GOOD = (_member("ATLAS_2/Training/readme.txt"), b"hello")
UNSAFE_MEMBERS = {
    "dot-dot": [_GOOD, (_member("ATLAS_2/../../evil.txt"), b"evil")],
    "absolute": [_GOOD, (_member("/tmp/atlas-ramp-evil.txt"), b"evil")],
    "symlink-out": [(_member("ATLAS_2/escape", tarfile.SYMTYPE, "../../.."), None)],
    "link-chain-out": [
        (_member("ATLAS_2/here", tarfile.SYMTYPE, "."), None),
        (_member("ATLAS_2/up", tarfile.SYMTYPE, "here/.."), None),  # the root
        (_member("ATLAS_2/up2", tarfile.SYMTYPE, "up/.."), None),  # above it
    ],
    # 'a' looks inside while 'b' does not exist; once b -> '.', a points three
    # levels above the tree, and what is written through it is refused.
    "file-through-link": [
        (_member("ATLAS_2/a", tarfile.SYMTYPE, "b/b/b/../../.."), None),
        (_member("ATLAS_2/b", tarfile.SYMTYPE, "."), None),
        (_member("ATLAS_2/a/evil.txt"), b"evil"),
    ],
    "folder-through-link": [
        (_member("ATLAS_2/a", tarfile.SYMTYPE, "b/b/b/../../.."), None),
        (_member("ATLAS_2/b", tarfile.SYMTYPE, "."), None),
        (_member("ATLAS_2/a/evil.txt", tarfile.DIRTYPE), None),
    ],
    "absolute-symlink": [(_member("ATLAS_2/etc", tarfile.SYMTYPE, "/etc"), None)],
    "hardlink-out": [
        (_member("ATLAS_2/passwd", tarfile.LNKTYPE, "../etc/passwd"), None)
    ],
    "fifo": [(_member("ATLAS_2/pipe", tarfile.FIFOTYPE), None)],
    "device": [(_member("ATLAS_2/disk", tarfile.CHRTYPE), None)],
}


@pytest.mark.parametrize("case", sorted(UNSAFE_MEMBERS))
def test_unsafe_members_are_refused(case, existing_data, tmp_path):
    members = UNSAFE_MEMBERS[case]
    source = tmp_path / "unsafe.enc"
    source.write_bytes(encrypted_bytes(tar_gz_bytes(members)))
    before = snapshot(existing_data)
    with pytest.raises(UnsafeArchiveError) as raised:
        install_over(existing_data, source, skip_checksum=True)
    assert repr(members[-1][0].name) in str(raised.value)
    assert snapshot(existing_data) == before
    assert_nothing_left_behind(existing_data)
    assert not list(tmp_path.rglob("evil.txt"))
    assert not Path("/tmp/atlas-ramp-evil.txt").exists()


def test_links_inside_the_tree_are_extracted(tmp_path):
    members = [
        (_member("top/a/file.txt"), b"content"),
        (_member("top/b/link.txt", tarfile.SYMTYPE, "../a/file.txt"), None),
        (_member("top/hard.txt", tarfile.LNKTYPE, "top/a/file.txt"), None),
    ]
    tar_bytes = gzip.decompress(tar_gz_bytes(members))
    destination = tmp_path / "out"
    assert extract_tar_stream(io.BytesIO(tar_bytes), destination) == 3
    assert (destination / "top/b/link.txt").read_text() == "content"
    assert (destination / "top/hard.txt").read_text() == "content"


def test_not_enough_disk_space_is_refused_before_writing(
    release, existing_data, monkeypatch
):
    monkeypatch.setattr(archive.install, "EXPANSION_FACTOR", 1e12)
    before = snapshot(existing_data)
    with pytest.raises(DataError, match="Not enough disk space"):
        install_over(existing_data, release["archive"], skip_checksum=True)
    assert snapshot(existing_data) == before
    assert_nothing_left_behind(existing_data)


def test_a_full_disk_during_extraction_installs_nothing(
    release, existing_data, monkeypatch
):
    check = archive.untar.safe_member

    def disk_full(member, *args, **kwargs):
        # Every member goes through this check just before it is written.
        if member.isfile():
            raise OSError(errno.ENOSPC, "No space left on device")
        return check(member, *args, **kwargs)

    monkeypatch.setattr(archive.untar, "safe_member", disk_full)
    before = snapshot(existing_data)
    with pytest.raises(DataError, match="full"):
        install_over(existing_data, release["archive"], skip_checksum=True)
    assert snapshot(existing_data) == before
    assert_nothing_left_behind(existing_data)


def _interrupt_on_third_file(monkeypatch):
    check = archive.untar.safe_member
    calls = []

    def interrupted(member, *args, **kwargs):
        # Every member goes through this check just before it is written.
        if member.isfile():
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
        return check(member, *args, **kwargs)

    monkeypatch.setattr(archive.untar, "safe_member", interrupted)


def test_an_interrupted_run_installs_nothing(release, existing_data, monkeypatch):
    _interrupt_on_third_file(monkeypatch)
    before = snapshot(existing_data)
    with pytest.raises(DataError, match="Interrupted"):
        install_over(existing_data, release["archive"], skip_checksum=True)
    assert snapshot(existing_data) == before
    assert_nothing_left_behind(existing_data)


def test_an_interrupted_download_keeps_its_part_file(
    release, existing_data, server, monkeypatch
):
    server.payload = release["archive"].read_bytes()
    _interrupt_on_third_file(monkeypatch)
    with pytest.raises(DataError, match="next run resumes"):
        install_atlas(
            existing_data,
            url=server.url,
            password=PASSWORD,
            force=True,
            skip_checksum=True,
            progress=False,
        )
    part = existing_data / ".downloads" / f"{archive.ATLAS_ARCHIVE_NAME}.part"
    assert server.payload.startswith(part.read_bytes())


# --------------------------------------------------------------------------
# The password
# --------------------------------------------------------------------------


def test_password_from_file_env_or_prompt(tmp_path, monkeypatch):
    monkeypatch.delenv("ATLAS_PASSWORD", raising=False)
    prompts = []
    monkeypatch.setattr(
        getpass, "getpass", lambda prompt: prompts.append(prompt) or "typed"
    )
    password_file = tmp_path / "pw"
    password_file.write_text("from file\r\nsecond line\n")
    assert resolve_password(password_file) == "from file"
    assert resolve_password() == "typed" and len(prompts) == 1
    monkeypatch.setenv("ATLAS_PASSWORD", "from env")
    assert resolve_password() == "from env"
    assert resolve_password(password_file) == "from file"


def test_password_errors_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("ATLAS_PASSWORD", raising=False)
    with pytest.raises(DataError, match="Cannot read the password file"):
        resolve_password(tmp_path / "missing")
    (tmp_path / "empty").write_text("")
    with pytest.raises(DataError, match="is empty"):
        resolve_password(tmp_path / "empty")
    monkeypatch.setattr(getpass, "getpass", lambda prompt: "")
    with pytest.raises(DataError, match="ATLAS_PASSWORD"):
        resolve_password()


# --------------------------------------------------------------------------
# Files encrypted another way, and wrong passwords that look right
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "maker, option",
    [("openssl", "-pbkdf2"), ("python", "-pbkdf2"), ("python", "-md md5")],
)
def test_an_archive_encrypted_another_way_is_named_as_such(
    maker, option, release, existing_data, tmp_path, capsys, monkeypatch
):
    made = tmp_path / "other.enc"
    if maker == "openssl":
        if OPENSSL is None:
            pytest.skip("openssl not installed")
        openssl_encrypt(release["tar_gz"], made, "-a", *option.split())
    else:
        encrypt_openssl_file(release["tar_gz"], made, PASSWORD, key_derivation=option)
    before = snapshot(existing_data)
    monkeypatch.setenv("ATLAS_PASSWORD", PASSWORD)
    argv = ["--atlas", "--archive", str(made), "--force", "--quiet"]
    assert main([*argv, "--output", str(existing_data)]) == 1
    message = capsys.readouterr().err
    assert f"encrypted with 'openssl enc {option}'" in message
    assert "not in the format of the ATLAS archive" in message
    assert "this password opens it that way" in message
    assert "Wrong password" not in message
    assert snapshot(existing_data) == before
    assert_nothing_left_behind(existing_data)


def test_a_wrong_password_says_the_format_may_be_another(release, tmp_path):
    made = encrypt_openssl_file(
        release["tar_gz"], tmp_path / "x.enc", PASSWORD, key_derivation="-pbkdf2"
    )
    with pytest.raises(WrongPasswordError) as raised:
        install_atlas(tmp_path / "data", made, password="wrong", progress=False)
    assert "Wrong password" in str(raised.value)
    assert "or the file is not in the ATLAS format" in str(raised.value)
    assert "-pbkdf2" in str(raised.value)


LUCKY_PASSWORD = "a wrong password, but a lucky one"


@pytest.fixture(scope="module")
def lucky_archive(release, tmp_path_factory) -> Path:
    """The release, encrypted so that LUCKY_PASSWORD passes the first-block check."""
    data = testing_archives.lucky_wrong_password_archive(
        release["tar_gz"].read_bytes(), PASSWORD, LUCKY_PASSWORD
    )
    path = tmp_path_factory.mktemp("lucky") / archive.ATLAS_ARCHIVE_NAME
    path.write_bytes(data)
    return path


def test_the_lucky_password_passes_the_first_check_and_only_it(lucky_archive):
    head = lucky_archive.read_bytes()[:64]
    archive.check_password(head, LUCKY_PASSWORD, name="lucky")  # the premise
    archive.check_password(head, PASSWORD, name="lucky")
    with pytest.raises(WrongPasswordError):
        archive.check_password(head, "another wrong password", name="lucky")


def test_a_lucky_wrong_password_on_an_intact_file_is_not_sent_to_download(
    lucky_archive, existing_data
):
    before = snapshot(existing_data)
    with pytest.raises(WrongPasswordError) as raised:
        install_over(
            existing_data,
            lucky_archive,
            password=LUCKY_PASSWORD,
            expected_sha256=sha256_of(lucky_archive),
        )
    message = str(raised.value)
    assert "Wrong password" in message and "the file is intact" in message
    assert "download" not in message.lower()
    assert snapshot(existing_data) == before
    assert_nothing_left_behind(existing_data)


def test_a_lucky_wrong_password_without_checksum_puts_the_password_first(
    lucky_archive, existing_data
):
    with pytest.raises(DataError) as raised:
        install_over(
            existing_data, lucky_archive, password=LUCKY_PASSWORD, skip_checksum=True
        )
    assert isinstance(raised.value, (CorruptArchiveError, WrongPasswordError))
    message = str(raised.value)
    assert "password is wrong" in message
    assert message.index("password") < message.lower().index("download")


def test_a_lucky_wrong_password_keeps_the_download(
    release, lucky_archive, existing_data, server
):
    server.payload = lucky_archive.read_bytes()
    options = dict(
        url=server.url,
        expected_sha256=sha256_of(lucky_archive),
        force=True,
        progress=False,
    )
    with pytest.raises(WrongPasswordError, match="the file is intact"):
        install_atlas(existing_data, password=LUCKY_PASSWORD, **options)
    part = existing_data / ".downloads" / f"{archive.ATLAS_ARCHIVE_NAME}.part"
    assert part.read_bytes() == server.payload  # kept, whole
    install_atlas(existing_data, password=PASSWORD, **options)
    assert server.range_headers[-1] == f"bytes={len(server.payload)}-"  # not again
    assert_installed(existing_data, release)


def test_a_wrong_password_in_a_download_stops_at_the_first_bytes(
    release, existing_data, server
):
    server.payload = release["archive"].read_bytes()
    with pytest.raises(WrongPasswordError, match="Wrong password"):
        install_atlas(
            existing_data,
            url=server.url,
            password="not the password",
            expected_sha256=release["sha256"],
            force=True,
            progress=False,
        )
    # The bytes received are kept for the next run, not deleted.
    part = existing_data / ".downloads" / f"{archive.ATLAS_ARCHIVE_NAME}.part"
    assert server.payload.startswith(part.read_bytes())


# --------------------------------------------------------------------------
# Links: what tarfile's filter leaves to us
# --------------------------------------------------------------------------


def test_a_chain_of_links_longer_than_path_max_is_refused(tmp_path):
    # The shape of CVE-2025-4517: the resolved path of the last link exceeds
    # PATH_MAX, where older Pythons' realpath silently stops resolving, so that
    # 'escape' looks inside while it points above the tree, and a hard link
    # through it would overwrite a file outside.
    component, steps = "d" * 247, "abcdefghijklmnop"
    members, path = [], ""
    for step in steps:
        members.append((_member(os.path.join(path, component), tarfile.DIRTYPE), None))
        members.append(
            (_member(os.path.join(path, step), tarfile.SYMTYPE, component), None)
        )
        path = os.path.join(path, component)
    link_path = os.path.join(*steps, "l" * 254)
    up = os.path.join(*[".."] * len(steps))
    members += [
        (_member(link_path, tarfile.SYMTYPE, up), None),
        (_member("escape", tarfile.SYMTYPE, os.path.join(link_path, "..")), None),
        (_member("flaglink", tarfile.LNKTYPE, "escape/flag"), None),
        (_member("flaglink"), b"overwritten"),
    ]
    flag = tmp_path / "flag"
    flag.write_text("original")
    tar_bytes = gzip.decompress(tar_gz_bytes(members))
    with pytest.raises(UnsafeArchiveError):
        extract_tar_stream(io.BytesIO(tar_bytes), tmp_path / "out")
    assert flag.read_text() == "original"


def test_links_are_followed_as_written_and_loops_refused(tmp_path):
    root = os.path.realpath(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "to_a").symlink_to("a")
    (tmp_path / "loop1").symlink_to("loop2")
    (tmp_path / "loop2").symlink_to("loop1")
    for relative in ("to_a/x/../y", "to_a/../a/z", "missing/../to_a"):
        path = os.path.join(root, relative)
        assert archive.untar._resolve(path, {}) == os.path.realpath(path)
    with pytest.raises(OSError):
        archive.untar._resolve(os.path.join(root, "loop1/x"), {})
    # A link created normalised is followed with the target the archive wrote.
    written = {os.path.join(root, "to_a"): ".."}
    assert archive.untar._resolve(os.path.join(root, "to_a"), written) == (
        os.path.dirname(root)
    )


def test_links_are_created_normalised(tmp_path):
    members = [
        (_member("top/a/file.txt"), b"content"),
        (_member("top/b/link.txt", tarfile.SYMTYPE, "../b/../a/./file.txt"), None),
    ]
    destination = tmp_path / "out"
    extract_tar_stream(io.BytesIO(gzip.decompress(tar_gz_bytes(members))), destination)
    assert os.readlink(destination / "top/b/link.txt") == "../a/file.txt"
    assert (destination / "top/b/link.txt").read_text() == "content"


def test_a_python_without_extraction_filters_is_told_to_upgrade(tmp_path, monkeypatch):
    monkeypatch.delattr(tarfile, "data_filter")
    tar_bytes = gzip.decompress(tar_gz_bytes([_GOOD]))
    with pytest.raises(DataError, match="Upgrade Python"):
        extract_tar_stream(io.BytesIO(tar_bytes), tmp_path / "out")
    assert not (tmp_path / "out").exists()
