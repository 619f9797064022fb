#!/usr/bin/env python3
"""Packs tollgate.wasm as an OCI image layout (a directory and a tarball of it), without docker.

    python3 scripts/oci-image.py --wasm target/wasm32-wasip1/release/tollgate.wasm \
        --out target/oci --tag 0.1.0

Writes `<out>/tollgate/` (an OCI image layout: `oci-layout`, `index.json`, `blobs/sha256/…`) and
`<out>/tollgate.oci.tar` (the same layout as one reproducible tar, for `skopeo copy
oci-archive:…` or `oras cp --from-oci-layout …`), then prints the digests to pin.

The format, and why this one (docs/deploy.md has the long version): Istio's agent and Envoy
Gateway fetch Wasm from a registry with the same image fetcher (istio pkg/wasm/imagefetcher.go,
envoyproxy/gateway internal/wasm/imagefetcher.go). It accepts three shapes: a Docker image whose
last layer is a tar.gz holding `plugin.wasm`; the same as a standard OCI image (last layer
`application/vnd.oci.image.layer.v1.tar+gzip`, the "compat" variant); or the Solo "oci" Wasm
artifact, which must have exactly two layers (`application/vnd.module.wasm.content.layer.v1+wasm`
and `application/vnd.module.wasm.config.v1+json`). We write the compat variant: both platforms
parse it, and it is a plain OCI image, so every registry and copy tool handles it without
artifact support. (The newer CNCF Wasm artifact, config `application/vnd.wasm.config.v0+json`
with an `application/wasm` layer, is *not* understood by either fetcher.)

What to pin: for an `oci://` URL both platforms compare `sha256` with the **manifest digest**
(`img.Digest()`), not with the wasm's own hash; for an HTTP URL they compare the hash of the
downloaded bytes, i.e. the wasm's sha256. Both are printed.

Reproducible: the same wasm and tag give the same bytes (tar entries with mtime 0, uid/gid 0, no
user names; gzip without a name or time; JSON with sorted keys), so the digest can be checked by
rebuilding. Stdlib only.
"""
import argparse
import gzip
import hashlib
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

OCI_LAYOUT = {"imageLayoutVersion": "1.0.0"}
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
# The file name Istio's and Envoy Gateway's fetchers look for in the layer (by base name).
PLUGIN_FILE = "plugin.wasm"
WASM_MAGIC = b"\0asm"


def canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def layer_tar(wasm: bytes) -> bytes:
    """An uncompressed tar with one entry, `plugin.wasm`, and nothing that varies between builds."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(PLUGIN_FILE)
        info.size = len(wasm)
        info.mode = 0o644
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(wasm))
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    buf = io.BytesIO()
    # filename "" and mtime 0: the header carries nothing of this machine or this moment.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return buf.getvalue()


def build(wasm: bytes, tag: str, version: str) -> dict:
    """Returns the blobs ({hex digest: bytes}), the index and the manifest digest."""
    if not wasm.startswith(WASM_MAGIC):
        raise ValueError("the input is not a WebAssembly module (it does not start with \\0asm)")
    tar = layer_tar(wasm)
    layer = gzip_bytes(tar)
    config = canonical_json(
        {
            # "wasm"/"wasip1" is how container tools label Wasm images; the fetchers ignore it.
            "architecture": "wasm",
            "os": "wasip1",
            "created": "1970-01-01T00:00:00Z",
            "config": {"Labels": {"org.opencontainers.image.title": "tollgate", "org.opencontainers.image.version": version}},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha256(tar)]},
        }
    )
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": "sha256:" + sha256(config), "size": len(config)},
            "layers": [
                {
                    "mediaType": MEDIA_LAYER,
                    "digest": "sha256:" + sha256(layer),
                    "size": len(layer),
                    "annotations": {"org.opencontainers.image.title": PLUGIN_FILE},
                }
            ],
            "annotations": {"org.opencontainers.image.title": "tollgate", "org.opencontainers.image.version": version},
        }
    )
    index = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [
                {
                    "mediaType": MEDIA_MANIFEST,
                    "digest": "sha256:" + sha256(manifest),
                    "size": len(manifest),
                    "annotations": {"org.opencontainers.image.ref.name": tag},
                }
            ],
        }
    )
    blobs = {sha256(b): b for b in (config, layer, manifest)}
    return {"blobs": blobs, "index": index, "manifest_digest": sha256(manifest)}


def write_layout(image: dict, layout: Path) -> None:
    if layout.exists():
        shutil.rmtree(layout)
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_bytes(canonical_json(OCI_LAYOUT))
    (layout / "index.json").write_bytes(image["index"])
    for digest, data in image["blobs"].items():
        (layout / "blobs" / "sha256" / digest).write_bytes(data)


def write_tarball(image: dict, path: Path) -> None:
    """The layout as one tar, entries in a fixed order with fixed metadata (reproducible)."""
    entries = [("oci-layout", canonical_json(OCI_LAYOUT)), ("index.json", image["index"])]
    entries += [(f"blobs/sha256/{d}", image["blobs"][d]) for d in sorted(image["blobs"])]
    with tarfile.open(path, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for directory in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            info.mtime = 0
            info.uname = info.gname = ""
            tar.addfile(info)
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))


def main(argv) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wasm", required=True, type=Path, help="the tollgate.wasm to pack")
    p.add_argument("--out", required=True, type=Path, help="directory for tollgate/ and tollgate.oci.tar")
    p.add_argument("--tag", required=True, help="tag recorded in index.json (org.opencontainers.image.ref.name)")
    p.add_argument("--quiet", action="store_true", help="print only the manifest digest (hex)")
    args = p.parse_args(argv)
    try:
        wasm = args.wasm.read_bytes()
        image = build(wasm, args.tag, args.tag)
    except (OSError, ValueError) as e:
        print(f"oci-image.py: {args.wasm}: {e}; build it first with `make wasm`", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    layout = args.out / "tollgate"
    tarball = args.out / "tollgate.oci.tar"
    write_layout(image, layout)
    write_tarball(image, tarball)
    if args.quiet:
        print(image["manifest_digest"])
        return 0
    print(f"OCI image layout: {layout} (tag {args.tag}); tarball: {tarball}")
    print(f"manifest sha256 (pin for oci:// URLs: WasmPlugin/EnvoyFilter sha256, EnvoyExtensionPolicy image.sha256): {image['manifest_digest']}")
    print(f"wasm sha256 (pin for HTTP URLs: EnvoyExtensionPolicy http.sha256, Envoy remote.sha256): {sha256(wasm)}")
    print(f"push: skopeo copy oci-archive:{tarball}:{args.tag} docker://REGISTRY/tollgate:{args.tag}   (keeps the digest)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
