#!/usr/bin/env python3
"""Reads back the OCI image layout of `make oci` (scripts/build-oci.py) and verifies it the way a
registry client and Istio's Wasm fetcher would: every blob's sha256 and size against its
descriptor, the media types of the Wasm image spec's compat variant, exactly one layer holding
`plugin.wasm` byte-identical to the module, the config's diff_id, no stray blobs; and that the
build is reproducible (same module → same manifest digest). Usage: check_oci.py WASM [LAYOUT]"""
import gzip
import hashlib
import io
import json
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
results = {"passed": 0, "failed": 0}


def check(ok, what):
    results["passed" if ok else "failed"] += 1
    if not ok:
        print("FAIL", what)
    return ok


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob(layout, descriptor, media_type):
    path = layout / "blobs" / "sha256" / descriptor["digest"].split(":", 1)[1]
    data = path.read_bytes()
    check(descriptor["mediaType"] == media_type, f"{descriptor['digest']}: media type {descriptor['mediaType']} is {media_type}")
    check(sha(data) == descriptor["digest"], f"{path.name}: content digest matches its descriptor")
    check(len(data) == descriptor["size"], f"{path.name}: size {len(data)} matches its descriptor ({descriptor['size']})")
    return data


def verify(layout, wasm):
    check(json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}, "oci-layout 1.0.0")
    index = json.loads((layout / "index.json").read_text())
    check(index["schemaVersion"] == 2 and index["mediaType"] == "application/vnd.oci.image.index.v1+json", "index.json")
    check(len(index["manifests"]) == 1, "one image in the layout")
    top = index["manifests"][0]
    check(bool(top.get("annotations", {}).get("org.opencontainers.image.ref.name")), "the image has a tag (ref.name)")
    manifest = json.loads(blob(layout, top, "application/vnd.oci.image.manifest.v1+json"))
    check(manifest["schemaVersion"] == 2 and manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json", "manifest")
    config = json.loads(blob(layout, manifest["config"], "application/vnd.oci.image.config.v1+json"))
    check(len(manifest["layers"]) == 1, "a single layer (Istio reads the compat variant's last tar+gzip layer)")
    layer = blob(layout, manifest["layers"][0], "application/vnd.oci.image.layer.v1.tar+gzip")
    tar_bytes = gzip.decompress(layer)
    check(config["rootfs"] == {"type": "layers", "diff_ids": [sha(tar_bytes)]}, "config diff_id is the uncompressed layer's digest")
    check(bool(config.get("architecture")) and bool(config.get("os")), "config names architecture and os (OCI required fields)")
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        members = tar.getmembers()
        check([m.name for m in members] == ["plugin.wasm"], f"the layer holds plugin.wasm only: {[m.name for m in members]}")
        module = tar.extractfile(members[0]).read()
    check(module == wasm, "plugin.wasm is the built module, byte for byte")
    check(module[:4] == b"\0asm", "plugin.wasm starts with the Wasm magic number (Istio checks it)")
    referenced = {top["digest"], manifest["config"]["digest"], manifest["layers"][0]["digest"]}
    present = {"sha256:" + p.name for p in (layout / "blobs" / "sha256").iterdir()}
    check(present == referenced, f"no stray or missing blobs: {sorted(present ^ referenced)}")
    return top["digest"]


def skopeo_reads_back(layout, digest):
    """A second reader (containers/image, as registries and CRI-O use it): skopeo inspects the
    image and copies it, verifying every blob, to a new layout with the same manifest digest (so a
    push keeps the digest a WasmPlugin pins)."""
    if not shutil.which("skopeo"):
        print("note: skopeo is not installed: the second reader is skipped")
        return
    tag = json.loads((layout / "index.json").read_text())["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
    p = subprocess.run(["skopeo", "inspect", f"oci:{layout}:{tag}"], capture_output=True, text=True)
    info = json.loads(p.stdout) if p.returncode == 0 else {}
    check(info.get("Digest") == digest and info.get("Architecture") == "wasm" and len(info.get("Layers", [])) == 1,
          f"skopeo inspect reads the image: {p.stdout[:500]}{p.stderr[-500:]}")
    with tempfile.TemporaryDirectory() as tmp:
        p = subprocess.run(["skopeo", "copy", "--quiet", f"oci:{layout}:{tag}", f"oci:{tmp}/copy:{tag}"], capture_output=True, text=True)
        copied = json.loads((pathlib.Path(tmp) / "copy" / "index.json").read_text())["manifests"][0]["digest"] if p.returncode == 0 else None
        check(copied == digest, f"skopeo copies it, blobs verified, to the same manifest digest: {p.stderr[-500:]}")


def main():
    wasm_path = pathlib.Path(sys.argv[1])
    wasm = wasm_path.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        layouts = []
        for i in range(2):
            out = pathlib.Path(tmp) / f"layout-{i}"
            subprocess.run([sys.executable, str(ROOT / "scripts" / "build-oci.py"), "--wasm", str(wasm_path), "--out", str(out),
                            "--tag", "test", "--digests", str(out) + ".json"], check=True, stdout=subprocess.DEVNULL)
            layouts.append((out, json.loads(pathlib.Path(str(out) + ".json").read_text())))
        d0 = verify(layouts[0][0], wasm)
        check(d0 == layouts[0][1]["manifest_digest"], "--digests names the manifest digest")
        check(layouts[0][1]["module_sha256"] == hashlib.sha256(wasm).hexdigest(), "--digests names the module's sha256")
        check(verify(layouts[1][0], wasm) == d0, "reproducible: the same module gives the same manifest digest")
    if len(sys.argv) > 2:
        # The layout `make oci` built, and the pinned manifests made from it.
        layout = pathlib.Path(sys.argv[2])
        digest = verify(layout, wasm)
        pinned = layout.parent / "deploy" / "istio" / "envoyfilter.yaml"
        if pinned.exists():
            check(digest.split(":", 1)[1] in pinned.read_text(), f"{pinned} pins the manifest digest {digest}")
        skopeo_reads_back(layout, digest)
    print(f"OCI layout checks: {results['passed']} passed, {results['failed']} failed")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
