"""``edgevae keygen`` and ``sign``: Ed25519 keys and signed bundles."""

from __future__ import annotations

import click

from .common import errors


@click.command()
@click.option("-o", "--out", "key_path", required=True, type=click.Path(dir_okay=False),
              help="Private key file to write (mode 0600); the public key goes to the same name + '.pub'.")
def keygen(key_path: str) -> None:
    """Create an Ed25519 key pair for signing bundles (export --sign, sign) and trusting them (--trusted-key)."""
    from edgevae.runtime.signing import generate_key

    with errors():
        private, public, fp = generate_key(key_path)
    click.echo(f"private key {private} (keep it secret; mode 0600)\npublic key  {public} (give it to devices: "
               f"--trusted-key {public})\nfingerprint {fp}")


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False),
              help="Ed25519 private key file ('edgevae keygen').")
def sign(bundle: str, key_path: str) -> None:
    """Sign BUNDLE (after checking every file against its manifest): writes BUNDLE/edgevae.sig."""
    from edgevae.runtime.signing import sign_bundle

    with errors():
        signature = sign_bundle(bundle, key_path)
    click.echo(f"signed {bundle} with {signature.fingerprint}")
