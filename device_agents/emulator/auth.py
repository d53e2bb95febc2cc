"""ADB's RSA authentication, device side: send a random token, verify the host's signature with the keys
the "user" has authorised, or accept a new public key (as tapping "Allow" on the phone does)."""

from __future__ import annotations

import base64
import struct
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

_WORDS = 64  # 2048-bit keys
_STRUCT = struct.Struct(f"<II{_WORDS * 4}s{_WORDS * 4}sI")  # words, n0inv, modulus, rr, exponent


def parse_android_pubkey(blob: bytes) -> rsa.RSAPublicKey:
    """Decode `base64(struct RSAPublicKey) [user@host]` as adb sends it and writes to adbkey.pub."""
    text = blob.rstrip(b"\0").decode("ascii", "replace").strip()
    raw = base64.b64decode(text.split()[0])
    if len(raw) != _STRUCT.size:
        raise ValueError(f"adb public key must be {_STRUCT.size} bytes, got {len(raw)}")
    words, _n0inv, modulus, _rr, exponent = _STRUCT.unpack(raw)
    if words != _WORDS:
        raise ValueError(f"unsupported key size: {words * 32} bits")
    n = int.from_bytes(modulus, "little")
    return rsa.RSAPublicNumbers(exponent, n).public_key()


def verify_token_signature(key: rsa.RSAPublicKey, token: bytes, signature: bytes) -> bool:
    """adb signs the 20-byte token as if it were a SHA-1 digest (RSA PKCS#1 v1.5)."""
    try:
        key.verify(
            signature, token, padding.PKCS1v15(), utils.Prehashed(hashes.SHA1())
        )  # SHA-1: adb's choice, not ours
        return True
    except (InvalidSignature, ValueError):
        return False


class KeyStore:
    """The device's `adb_keys`: one `base64 comment` line per authorised host key, kept across restarts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys: list[rsa.RSAPublicKey] = []
        self.lines: list[str] = []
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    self.lines.append(line.strip())
                    self.keys.append(parse_android_pubkey(line.encode()))

    def verify(self, token: bytes, signature: bytes) -> bool:
        return any(verify_token_signature(k, token, signature) for k in self.keys)

    def authorise(self, blob: bytes) -> None:
        key = parse_android_pubkey(blob)
        line = blob.rstrip(b"\0").decode("ascii", "replace").strip()
        self.keys.append(key)
        self.lines.append(line)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n".join(self.lines) + "\n")
