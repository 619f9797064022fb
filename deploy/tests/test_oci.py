"""`make oci` (scripts/oci-image.py): an OCI image layout of tollgate.wasm that Istio and Envoy
Gateway can pull.

`read_layout` checks a layout the way the OCI image-layout spec and the platforms' fetchers read
it (istio pkg/wasm/imagefetcher.go `extractOCIStandardImage`, copied by Envoy Gateway): every blob
named by its sha256 and of the size its descriptor says, the media types, and the *last* layer a
tar.gz holding `plugin.wasm`. It returns the wasm bytes found there.
"""
import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile

import pytest

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "oci-image.py"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob(layout, descriptor) -> bytes:
    algo, _, digest = descriptor["digest"].partition(":")
    assert algo == "sha256", descriptor
    data = (layout / "blobs" / "sha256" / digest).read_bytes()
    assert sha256(data) == digest, f"blob {digest}: its content hashes to {sha256(data)}"
    assert len(data) == descriptor["size"], f"blob {digest}: {len(data)} bytes, descriptor says {descriptor['size']}"
    return data


def read_layout(layout):
    """Returns (manifest digest, wasm bytes), or fails naming what is wrong."""
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    # mediaType is a SHOULD in an index (image-spec); when present it must be the index type.
    assert index["schemaVersion"] == 2 and index.get("mediaType", "application/vnd.oci.image.index.v1+json") == "application/vnd.oci.image.index.v1+json"
    (desc,) = index["manifests"]
    assert desc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert desc["annotations"]["org.opencontainers.image.ref.name"]
    manifest = json.loads(blob(layout, desc))
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == desc["mediaType"]
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    config = json.loads(blob(layout, manifest["config"]))
    layer_desc = manifest["layers"][-1]
    assert layer_desc["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    tar_bytes = gzip.decompress(blob(layout, layer_desc))
    assert config["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + sha256(tar_bytes)]}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["plugin.wasm"]
        wasm = tar.extractfile(members[0]).read()
    return desc["digest"].removeprefix("sha256:"), wasm


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tollgate_wasm):
    out = tmp_path_factory.mktemp("oci")
    r = run("--wasm", tollgate_wasm, "--out", out, "--tag", "0.1.0")
    assert r.returncode == 0, r.stderr
    return out, r.stdout


def test_the_layout_is_valid_and_its_wasm_layer_is_tollgate_wasm(built, tollgate_wasm):
    out, _ = built
    index = json.loads((out / "tollgate" / "index.json").read_text())
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    _, wasm = read_layout(out / "tollgate")
    assert wasm == tollgate_wasm.read_bytes()


def test_the_printed_pins_are_the_manifest_digest_and_the_wasm_hash(built, tollgate_wasm):
    out, stdout = built
    digest, _ = read_layout(out / "tollgate")
    assert f"manifest sha256 (pin for oci:// URLs" in stdout and digest in stdout
    assert sha256(tollgate_wasm.read_bytes()) in stdout
    quiet = run("--wasm", tollgate_wasm, "--out", out, "--tag", "0.1.0", "--quiet")
    assert quiet.stdout.strip() == digest


def test_the_tarball_is_the_same_layout(built, tmp_path, tollgate_wasm):
    out, _ = built
    with tarfile.open(out / "tollgate.oci.tar") as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    assert read_layout(tmp_path / "unpacked") == read_layout(out / "tollgate")


def test_two_builds_are_byte_identical(built, tmp_path, tollgate_wasm):
    out, _ = built
    assert run("--wasm", tollgate_wasm, "--out", tmp_path, "--tag", "0.1.0").returncode == 0
    assert (tmp_path / "tollgate.oci.tar").read_bytes() == (out / "tollgate.oci.tar").read_bytes()


def test_a_changed_blob_fails_the_layout_check(built, tmp_path):
    out, _ = built
    shutil.copytree(out / "tollgate", tmp_path / "layout")
    digest, _ = read_layout(tmp_path / "layout")
    manifest = json.loads((tmp_path / "layout" / "blobs" / "sha256" / digest).read_text())
    layer = tmp_path / "layout" / "blobs" / "sha256" / manifest["layers"][-1]["digest"].removeprefix("sha256:")
    data = bytearray(layer.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte of the compressed wasm differs
    layer.write_bytes(bytes(data))
    with pytest.raises(AssertionError, match="hashes to"):
        read_layout(tmp_path / "layout")


def test_an_input_that_is_not_wasm_is_refused(tmp_path):
    (tmp_path / "x.wasm").write_bytes(b"#!/bin/sh\n")
    r = run("--wasm", tmp_path / "x.wasm", "--out", tmp_path / "out", "--tag", "t")
    assert r.returncode == 2 and "not a WebAssembly module" in r.stderr
    assert not (tmp_path / "out").exists()


def skopeo(*args):
    exe = shutil.which("skopeo")
    assert exe, "skopeo is needed to read the image as copy tools do (scripts/setup.sh installs it)"
    r = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_skopeo_reads_the_layout_and_copies_the_tarball_keeping_the_digest(built, tmp_path):
    """An independent reader (containers/image, as registries' copy tools use it) sees the image
    and the digest to pin, and a copy out of the tarball keeps that digest."""
    out, _ = built
    digest, _ = read_layout(out / "tollgate")
    inspected = json.loads(skopeo("inspect", f"oci:{out / 'tollgate'}:0.1.0"))
    assert inspected["Digest"] == "sha256:" + digest
    assert (inspected["Architecture"], inspected["Os"]) == ("wasm", "wasip1")
    skopeo("copy", "--preserve-digests", f"oci-archive:{out / 'tollgate.oci.tar'}:0.1.0", f"oci:{tmp_path / 'copy'}:0.1.0")
    assert read_layout(tmp_path / "copy") == read_layout(out / "tollgate")
