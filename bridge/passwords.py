"""Password storage and verification for SMPP accounts.

SMPP 3.4 sends the bind password in clear text and limits it to 8 characters, so hashing cannot
protect it on the wire. Hashing protects it *at rest*: operators can keep real passwords out of
config files, backups and repositories by storing ``pbkdf2_sha256$<iterations>$<salt>$<hash>``
instead. Plain stored values remain supported for demos and tests.

Both forms are compared in constant time (:func:`hmac.compare_digest`) so response timing does
not reveal how much of a guess was right.

Generate a hash interactively with ``python -m bridge.passwords``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from pathlib import Path

__all__ = [
    "HASH_PREFIX",
    "MAX_SMPP_PASSWORD_LENGTH",
    "hash_password",
    "is_hashed",
    "parse_hash",
    "secret_file",
    "verify_password",
]

#: Scheme tag that starts every hashed password.
HASH_PREFIX = "pbkdf2_sha256$"
#: SMPP 3.4 bind password: C-Octet String of at most 9 octets including the NUL.
MAX_SMPP_PASSWORD_LENGTH = 8

_SALT_BYTES = 16
_MIN_HASH_BYTES = 16
# Guard against a config typo turning every bind into minutes of CPU.
_MAX_ITERATIONS = 10_000_000


def is_hashed(stored: str) -> bool:
    """True if ``stored`` claims to be a pbkdf2_sha256 hash (it may still be malformed)."""
    return stored.startswith(HASH_PREFIX)


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    # Accept both padded and unpadded forms: hashes are copy-pasted by humans.
    padded = text + "=" * (-len(text) % 4)
    return base64.b64decode(padded.encode("ascii"), validate=True)


def parse_hash(stored: str) -> tuple[int, bytes, bytes]:
    """Split a stored hash into ``(iterations, salt, digest)``.

    Raises ``ValueError`` with a message that never contains the stored value, so the caller
    (config validation) can show it to the operator without leaking anything.
    """
    parts = stored.split("$")
    if len(parts) != 4 or parts[0] != HASH_PREFIX.rstrip("$"):
        raise ValueError(
            "malformed password hash: expected pbkdf2_sha256$<iterations>$<salt_b64>$<hash_b64>"
        )
    _, iterations_text, salt_text, digest_text = parts
    if not iterations_text.isdigit():
        raise ValueError("malformed password hash: iterations must be a positive integer")
    iterations = int(iterations_text)
    if not 1 <= iterations <= _MAX_ITERATIONS:
        raise ValueError(f"malformed password hash: iterations must be 1..{_MAX_ITERATIONS}")
    try:
        salt = _b64decode(salt_text)
        digest = _b64decode(digest_text)
    except (binascii.Error, ValueError):
        raise ValueError("malformed password hash: salt and hash must be base64") from None
    if not salt:
        raise ValueError("malformed password hash: empty salt")
    if len(digest) < _MIN_HASH_BYTES:
        raise ValueError(f"malformed password hash: hash shorter than {_MIN_HASH_BYTES} bytes")
    return iterations, salt, digest


def hash_password(plain: str, *, iterations: int = 100_000) -> str:
    """Hash an SMPP password for storage in the config file.

    Refuses passwords an ESME could never send (empty or longer than 8 characters), because a
    hash of such a password would create an account nobody can bind to.
    """
    if not plain:
        raise ValueError("password must not be empty")
    if len(plain) > MAX_SMPP_PASSWORD_LENGTH:
        raise ValueError(f"SMPP 3.4 passwords are at most {MAX_SMPP_PASSWORD_LENGTH} characters")
    if not 1 <= iterations <= _MAX_ITERATIONS:
        raise ValueError(f"iterations must be 1..{_MAX_ITERATIONS}")
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha256", plain.encode("utf-8"), salt, iterations)
    return f"{HASH_PREFIX}{iterations}${_b64encode(salt)}${_b64encode(digest)}"


def verify_password(stored: str, given: str) -> bool:
    """Check ``given`` (from a bind PDU) against ``stored`` (plain or hashed) in constant time.

    A malformed hash verifies nothing rather than raising: config validation reports it, and
    an auth path that raises could be turned into a crash by whoever controls the input.
    """
    given_bytes = given.encode("utf-8")
    if is_hashed(stored):
        try:
            iterations, salt, digest = parse_hash(stored)
        except ValueError:
            return False
        candidate = hashlib.pbkdf2_hmac("sha256", given_bytes, salt, iterations, len(digest))
        return hmac.compare_digest(candidate, digest)
    return hmac.compare_digest(stored.encode("utf-8"), given_bytes)


def _main() -> None:
    """Prompt for a password and print its hash, for pasting into ``[[accounts]] password``."""
    import getpass

    plain = getpass.getpass("SMPP password (max 8 characters): ")
    if getpass.getpass("again: ") != plain:
        raise SystemExit("passwords do not match")
    try:
        print(hash_password(plain))
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


if __name__ == "__main__":
    _main()


def secret_file(path: Path, *, create: bool = True) -> str | None:
    """The random secret kept in ``path``; when the file does not exist and ``create`` is true,
    a new one (64 hex digits) is written there first, mode 0600 from the start (never
    readable by others, even briefly). None when it does not exist and ``create`` is false.
    Two processes creating it at once agree: the loser of the exclusive create reads the
    winner's."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        if not create:
            return None
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value
