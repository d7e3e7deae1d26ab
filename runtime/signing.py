"""Signed bundles: an Ed25519 signature over the bundle's manifest, which lists the sha256 of every other file.

A device that is given trusted public keys loads only bundles signed by one of them and unaltered since. The
cryptography comes from the ``cryptography`` package (the ``sign`` extra), imported only when keys are used.

The signed payload is ``PAYLOAD_PREFIX`` followed by the manifest in the JSON Canonicalization Scheme (RFC 8785:
object keys sorted by UTF-16 code units, no white space, numbers as ECMAScript prints them), so re-serialising
``edgevae.json`` (re-indenting it, reordering keys, writing 1.0 as 1) does not break the signature, while any
change of a value does. docs/bundle-format.md describes the signature file for verifiers in other languages.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .atomic import atomic_open, write_atomic
from .errors import BundleError, MissingExtraError, SigningKeyError
from .files import read_manifest, verify_files

SIGNATURE_FILE = "edgevae.sig"
SIGNATURE_FORMAT = "edgevae-signature"
SIGNATURE_VERSION = 1
ALGORITHM = "ed25519"
PAYLOAD_PREFIX = b"edgevae-bundle-signature-v1\n"
# Paths of trusted public keys, separated by os.pathsep, used by load() when no keys are passed.
TRUSTED_KEYS_ENV = "EDGEVAE_TRUSTED_KEYS"

KeySource = str | os.PathLike[str]






@dataclass(frozen=True)
class _Crypto:
    """The parts of the ``cryptography`` package edgevae uses."""

    ed25519: Any
    serialization: Any
    InvalidSignature: type[Exception]


def _crypto() -> _Crypto:
    """Import ``cryptography`` (the ``sign`` extra), or raise the one-line install hint."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise MissingExtraError("signed bundles need the sign extra: pip install 'edgevae[sign]'") from None
    return _Crypto(ed25519, serialization, InvalidSignature)


# ----------------------------------------------------------------------------------------- canonical JSON
def canonical_json(value: Any) -> bytes:
    """``value`` in the JSON Canonicalization Scheme (RFC 8785), UTF-8 encoded.

    Raises:
        ValueError: a non-finite number, or a value JSON cannot hold.
    """
    return _canonical(value).encode("utf-8")


def _canonical(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return ecmascript_number(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        keys = sorted(value, key=lambda k: str(k).encode("utf-16-be"))
        return "{" + ",".join(f"{json.dumps(str(k), ensure_ascii=False)}:{_canonical(value[k])}" for k in keys) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_canonical(v) for v in value) + "]"
    raise ValueError(f"cannot canonicalise a {type(value).__name__} as JSON")


def ecmascript_number(x: float) -> str:
    """A float as ECMAScript's Number.prototype.toString prints it (what RFC 8785 prescribes)."""
    if not math.isfinite(x):
        raise ValueError(f"JSON has no representation for {x!r}")
    if x == 0:
        return "0"
    _, digit_tuple, exponent = Decimal(float.__repr__(abs(float(x)))).as_tuple()  # repr: shortest round-trip digits
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    exponent = int(exponent) + len(digit_tuple) - len(digits)  # x = digits * 10**exponent
    k, n = len(digits), int(exponent) + len(digits)  # x = 0.digits * 10**n
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * -n + digits
    else:
        mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
        text = f"{mantissa}e{'+' if n - 1 >= 0 else '-'}{abs(n - 1)}"
    return ("-" if x < 0 else "") + text


def signed_payload(manifest: Mapping[str, Any]) -> bytes:
    """The bytes a bundle's signature covers: the prefix and the canonical manifest."""
    return PAYLOAD_PREFIX + canonical_json(manifest)


# ----------------------------------------------------------------------------------------- keys
def fingerprint(public_raw: bytes) -> str:
    """A key's name: ``sha256:`` and the first 32 hex digits of the sha256 of its 32 raw public bytes."""
    return "sha256:" + hashlib.sha256(public_raw).hexdigest()[:32]


def generate_key(path: KeySource) -> tuple[Path, Path, str]:
    """Write a new Ed25519 key pair: the private key to ``path`` (PEM, PKCS#8, mode 0600) and the public key to
    ``path.pub`` (PEM). Returns both paths and the fingerprint.

    Raises:
        SigningKeyError: ``path`` (or ``path.pub``) exists already.
        MissingExtraError: ``cryptography`` is not installed.
    """
    crypto = _crypto()
    ser = crypto.serialization
    private_path, public_path = Path(path), Path(f"{os.fspath(path)}.pub")
    for p in (private_path, public_path):
        if p.exists():
            raise SigningKeyError(f"{p} exists already; choose another name (keys are never overwritten)")
    key = crypto.ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    with atomic_open(private_path, "wb") as handle:
        os.chmod(handle.name, 0o600)  # before a byte of the key is written
        handle.write(pem)
    public = key.public_key()
    write_atomic(public_path, public.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path, fingerprint(_raw(public))


def _raw(public_key: Any) -> bytes:
    ser = _crypto().serialization
    raw: bytes = public_key.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return raw


def _read_pem(path: KeySource) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"{path}: cannot read the key file ({exc.strerror or exc})") from exc


def load_private_key(path: KeySource) -> Any:
    """An Ed25519 private key from a PEM file written by :func:`generate_key`.

    Raises:
        SigningKeyError: unreadable, or not an unencrypted Ed25519 private key.
    """
    crypto = _crypto()
    try:
        key = crypto.serialization.load_pem_private_key(_read_pem(path), password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{path}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, crypto.ed25519.Ed25519PrivateKey):
        raise SigningKeyError(f"{path}: a {type(key).__name__}, but edgevae signs with Ed25519 keys ('edgevae keygen')")
    return key


def load_public_key(path: KeySource) -> Any:
    """An Ed25519 public key from a PEM file (a private key file is accepted too: its public half is used).

    Raises:
        SigningKeyError: unreadable, or not an Ed25519 key.
    """
    crypto = _crypto()
    pem = _read_pem(path)
    if b"PRIVATE KEY" in pem:
        return load_private_key(path).public_key()
    try:
        key = crypto.serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{path}: not a PEM public key ({exc})") from exc
    if not isinstance(key, crypto.ed25519.Ed25519PublicKey):
        raise SigningKeyError(f"{path}: a {type(key).__name__}, but edgevae verifies Ed25519 keys ('edgevae keygen')")
    return key


def trusted_keys_from_env() -> list[str]:
    """Key paths from ``EDGEVAE_TRUSTED_KEYS`` (separated by ``os.pathsep``); empty when it is unset."""
    return [p for p in os.environ.get(TRUSTED_KEYS_ENV, "").split(os.pathsep) if p.strip()]


# ----------------------------------------------------------------------------------------- sign and verify
@dataclass(frozen=True)
class Signature:
    """A bundle's ``edgevae.sig``: who signed (fingerprint and public key) and the signature bytes."""

    fingerprint: str
    public_key: bytes
    signature: bytes

    def to_json(self) -> str:
        return json.dumps({
            "format": SIGNATURE_FORMAT, "version": SIGNATURE_VERSION, "algorithm": ALGORITHM,
            "payload": PAYLOAD_PREFIX.decode().strip() + " + RFC 8785 canonical JSON of edgevae.json",
            "key_fingerprint": self.fingerprint,
            "public_key": base64.b64encode(self.public_key).decode(),
            "signature": base64.b64encode(self.signature).decode(),
        }, indent=2) + "\n"

    @classmethod
    def read(cls, bundle: Path) -> "Signature | None":
        """The bundle's signature, or None when it has no signature file.

        Raises:
            BundleError: the file is unreadable, truncated or malformed.
        """
        path = bundle / SIGNATURE_FILE
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BundleError(f"{path}: cannot read the signature ({exc})") from exc
        try:
            data = json.loads(text)
            if data.get("format") != SIGNATURE_FORMAT or data.get("algorithm") != ALGORITHM:
                raise ValueError(f"format {data.get('format')!r}, algorithm {data.get('algorithm')!r}")
            if data.get("version") != SIGNATURE_VERSION:
                raise ValueError(f"version {data.get('version')!r} (this edgevae reads {SIGNATURE_VERSION})")
            public = base64.b64decode(data["public_key"], validate=True)
            signature = base64.b64decode(data["signature"], validate=True)
            if len(public) != 32 or len(signature) != 64:
                raise ValueError("an Ed25519 key has 32 bytes and a signature 64")
            return cls(str(data["key_fingerprint"]), public, signature)
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{path}: the signature file is damaged or truncated ({exc}); re-sign the bundle "
                              "with 'edgevae sign'") from exc


def sign_manifest(manifest: Mapping[str, Any], key_path: KeySource) -> Signature:
    """Sign a manifest dictionary with the private key in ``key_path``."""
    key = load_private_key(key_path)
    raw = _raw(key.public_key())
    return Signature(fingerprint(raw), raw, key.sign(signed_payload(manifest)))


def sign_bundle(bundle: KeySource, key_path: KeySource) -> Signature:
    """Sign a bundle folder in place: writes ``edgevae.sig`` (atomically) for its current manifest.

    The manifest must list the sha256 of every file; :func:`~edgevae.runtime.load` checks them, so the
    bundle must load (and verify) before it is signed.

    Raises:
        BundleError: the bundle does not load.
        SigningKeyError: the key file is not an Ed25519 private key.
    """

    path = Path(bundle)
    manifest = read_manifest(path)
    verify_files(path, manifest)
    signature = sign_manifest(manifest.raw, key_path)
    write_atomic(path / SIGNATURE_FILE, signature.to_json())
    return signature


def verify_signature(bundle: Path, manifest: Mapping[str, Any], trusted: Sequence[KeySource]) -> str:
    """Check that ``manifest`` (as read from ``bundle``) is signed by one of the ``trusted`` keys.

    Returns:
        The fingerprint of the key that signed it.

    Raises:
        BundleError: unsigned, signed by a key that is not trusted, or altered since it was signed.
        SigningKeyError: a trusted key file is unreadable.
        MissingExtraError: ``cryptography`` is not installed.
    """
    crypto = _crypto()
    keys = {fingerprint(_raw(k)): k for k in (load_public_key(p) for p in trusted)}
    signature = Signature.read(bundle)
    if signature is None:
        raise BundleError(f"{bundle}: the bundle is not signed, and only bundles signed by a trusted key may load "
                          f"(trusted: {', '.join(keys)}); sign it with 'edgevae sign {bundle} --key KEY'")
    key = keys.get(signature.fingerprint)
    if key is None:
        raise BundleError(f"{bundle}: signed by {signature.fingerprint}, which is not a trusted key (trusted: "
                          f"{', '.join(keys)}); refusing to load it")
    try:
        key.verify(signature.signature, signed_payload(manifest))
    except crypto.InvalidSignature:
        raise BundleError(f"{bundle}: the signature by {signature.fingerprint} does not match the manifest: the "
                          "bundle was altered after it was signed. Refusing to load it") from None
    return signature.fingerprint


def describe_signature(bundle: Path, manifest: Mapping[str, Any]) -> str:
    """One line for ``edgevae info``: unsigned, or signed by which key and whether that key's signature holds."""
    signature = Signature.read(bundle)
    if signature is None:
        return "unsigned"
    try:
        crypto = _crypto()
    except MissingExtraError:
        return f"signed by {signature.fingerprint} (not checked: pip install 'edgevae[sign]')"
    if fingerprint(signature.public_key) != signature.fingerprint:
        return f"signed by {signature.fingerprint}, but the signature file's public key has another fingerprint"
    try:
        public = crypto.ed25519.Ed25519PublicKey.from_public_bytes(signature.public_key)
        public.verify(signature.signature, signed_payload(manifest))
    except crypto.InvalidSignature:
        return f"signed by {signature.fingerprint}, but the bundle was altered after signing"
    return f"signed by {signature.fingerprint} (valid for that key; trust it with --trusted-key)"


def all_key_paths(keys: Iterable[KeySource] | None) -> list[KeySource]:
    """The keys to trust: those given, or else those named by ``EDGEVAE_TRUSTED_KEYS``."""
    return list(keys) if keys is not None else list(trusted_keys_from_env())
