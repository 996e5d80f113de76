#!/usr/bin/env python3
"""Makes an ES256 key pair, its JWKS and signed JWTs, for the test of header identities set by
Envoy's jwt_authn filter (the trusted authentication filter in front of spapi-guard).

    python3 tests/make_jwt.py ISSUER SUBJECT [SUBJECT…]   → {"jwks": "...", "tokens": {"sub": "jwt", …}}
"""
import base64
import json
import sys
import time

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def main():
    issuer, subjects = sys.argv[1], sys.argv[2:]
    key = ec.generate_private_key(ec.SECP256R1())
    numbers = key.public_key().public_numbers()
    jwk = {"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "test-1", "use": "sig",
           "x": b64(numbers.x.to_bytes(32, "big")), "y": b64(numbers.y.to_bytes(32, "big"))}
    tokens = {}
    for sub in subjects:
        header = b64(json.dumps({"alg": "ES256", "typ": "JWT", "kid": "test-1"}).encode())
        claims = b64(json.dumps({"iss": issuer, "sub": sub, "iat": int(time.time()), "exp": int(time.time()) + 3600}).encode())
        r, s = decode_dss_signature(key.sign(f"{header}.{claims}".encode(), ec.ECDSA(hashes.SHA256())))
        tokens[sub] = f"{header}.{claims}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
    print(json.dumps({"jwks": json.dumps({"keys": [jwk]}), "tokens": tokens}))


if __name__ == "__main__":
    main()
