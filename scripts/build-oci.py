#!/usr/bin/env python3
"""Packs the filter into an OCI image layout that Istio (WasmPlugin `url: oci://…`) and Envoy
Gateway (EnvoyExtensionPolicy `code.type: Image`) pull: no container engine needed.

    python3 scripts/build-oci.py --wasm target/wasm32-wasip1/release/spapi_guard.wasm \
        --out target/oci/spapi-guard --tag 0.1.0

Format: the *compat* variant of the Wasm image specification (solo-io/wasm spec-compat.md), i.e.
an ordinary OCI image whose single layer (application/vnd.oci.image.layer.v1.tar+gzip) is a tar
holding `plugin.wasm`, with a standard OCI config (application/vnd.oci.image.config.v1+json).
Why not the *oci* variant (config application/vnd.module.wasm.config.v1+json, layer
application/vnd.module.wasm.content.layer.v1+wasm)? Istio's fetcher (pkg/wasm/imagefetcher.go)
accepts that variant only with exactly two layers and rejects a single-layer one, while it accepts
the compat variant with one layer; Envoy Gateway's fetcher is derived from Istio's; and any
registry and copy tool (oras, crane, skopeo, regctl) handles a standard OCI image.

The layout is reproducible: the same .wasm gives the same bytes and digests (fixed tar and gzip
metadata), so the manifest digest can be pinned. Note what the `sha256` of an `oci://` WasmPlugin
is: Istio compares it with the image *manifest* digest (pkg/wasm/cache.go), not with the module's
sha256 (which it checks for http(s) URLs). --digests writes both, for scripts/gen-deploy.py.

Push with any OCI copy tool, e.g.
    oras cp --from-oci-layout target/oci/spapi-guard:0.1.0 REGISTRY/spapi-guard:0.1.0
    skopeo copy oci:target/oci/spapi-guard:0.1.0 docker://REGISTRY/spapi-guard:0.1.0
"""
import argparse
import gzip
import hashlib
import io
import json
import pathlib
import shutil
import sys
import tarfile

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TGZ = "application/vnd.oci.image.layer.v1.tar+gzip"
WASM_NAME = "plugin.wasm"


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def layer_tar(wasm):
    """The layer: an uncompressed tar with plugin.wasm (fixed metadata), then its gzip."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(WASM_NAME)
        info.size, info.mode, info.mtime, info.uid, info.gid = len(wasm), 0o444, 0, 0, 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(wasm))
    tar_bytes = raw.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0, compresslevel=9, filename="") as f:
        f.write(tar_bytes)
    return tar_bytes, gz.getvalue()


def build(wasm_path, out, tag, source=None):
    wasm = pathlib.Path(wasm_path).read_bytes()
    if wasm[:4] != b"\0asm":
        raise SystemExit(f"build-oci: {wasm_path} is not a Wasm module")
    tar_bytes, layer = layer_tar(wasm)
    config = canonical({
        "architecture": "wasm",
        "os": "wasip1",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [digest(tar_bytes)]},
    })
    annotations = {"org.opencontainers.image.title": "spapi-guard", "org.opencontainers.image.version": tag}
    if source:
        annotations["org.opencontainers.image.source"] = source
    manifest = canonical({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest(config), "size": len(config)},
        # No title annotation on the layer: oras would save the tar.gz itself under that name.
        "layers": [{"mediaType": OCI_LAYER_TGZ, "digest": digest(layer), "size": len(layer)}],
        "annotations": annotations,
    })
    index = canonical({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest(manifest), "size": len(manifest),
                       "annotations": {"org.opencontainers.image.ref.name": tag}}],
    })
    out = pathlib.Path(out)
    if out.exists():
        shutil.rmtree(out)
    blobs = out / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for blob in (config, layer, manifest):
        (blobs / digest(blob).split(":", 1)[1]).write_bytes(blob)
    (out / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))
    (out / "index.json").write_bytes(index)
    return {"tag": tag, "manifest_digest": digest(manifest), "module_sha256": hashlib.sha256(wasm).hexdigest(),
            "layer_digest": digest(layer), "config_digest": digest(config)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wasm", required=True)
    p.add_argument("--out", required=True, help="the OCI image layout folder (replaced)")
    p.add_argument("--tag", required=True)
    p.add_argument("--source", help="org.opencontainers.image.source annotation")
    p.add_argument("--digests", help="write the digests here as JSON")
    a = p.parse_args()
    d = build(a.wasm, a.out, a.tag, a.source)
    if a.digests:
        pathlib.Path(a.digests).write_text(json.dumps(d, indent=2) + "\n")
    print(f"OCI image layout {a.out}: tag {d['tag']}, manifest {d['manifest_digest']} "
          f"(the sha256 an oci:// WasmPlugin pins), module sha256:{d['module_sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
