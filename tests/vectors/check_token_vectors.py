#!/usr/bin/env python3
"""Independent re-implementation of the spapi-guard token construction (docs/TOKENS.md) with
Python's `cryptography` package, checked against the known-answer vectors pinned in
src/tokens.rs. Proves the documented construction is the one the Rust code implements."""
import base64
import hashlib
import hmac
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY = bytes(range(32))
SALT = b"spapi-guard/v1"


def hkdf(ikm, info, length=32):
    prk = hmac.new(SALT, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()[:length]


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def deterministic_token(key_id, cls, plaintext):
    header = f"spgt1.ds.{key_id}.{cls}".encode()
    nonce = hmac.new(hkdf(KEY, b"siv-nonce"), header + b"\x00" + plaintext, hashlib.sha256).digest()[:12]
    ct = AESGCM(hkdf(KEY, b"aes-256-gcm")).encrypt(nonce, plaintext, header)
    return header.decode() + "." + b64(nonce + ct)


def keyed_hash(key_id, cls, kind, plaintext):
    digest = hmac.new(hkdf(KEY, b"keyed-hash"), cls.encode() + b"\x00" + kind + b"\x00" + plaintext, hashlib.sha256).digest()
    return f"spgh2.{key_id}.{cls}." + b64(digest[:16])


def fingerprint(key):
    return hkdf(key, b"key-fingerprint", 16).hex()


def main():
    src = open(sys.argv[1] if len(sys.argv) > 1 else "src/tokens.rs").read()
    token = deterministic_token("test", "email", b"buyer@example.com")
    hashed = keyed_hash("test", "email", b"s", b"buyer@example.com")
    vectors = (("DETERMINISTIC_VECTOR", token), ("HASH_VECTOR", hashed), ("FINGERPRINT_VECTOR", fingerprint(KEY)))
    ok = True
    failed = 0
    for name, value in vectors:
        if f'const {name}: &str = "{value}";' not in src:
            print(f"vector {name} differs from the documented construction: {value}")
            ok = False
            failed += 1
    print(f"token vectors: {len(vectors) - failed} passed, {failed} failed")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
