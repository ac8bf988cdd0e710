"""The secret files compose.yaml mounts (`reco compose-secrets`).

Compose hands each one to its services as a read-only file under `/run/secrets/`, never as an
environment value (Ray logs runtime environments; `docker inspect` shows a container's). The
platform reads the store's keys from a 0600 file (`StoreSettings.credentials`), so these are
written 0600; Docker Compose bind-mounts a file secret with the host file's owner and mode
(it does not apply a secret's uid, gid or mode), so the folder's files must belong to the
image's user, uid 10001 (README, "Containers").
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from backend.core.store import StoreSettings
from backend.ops.objectstore import identities_config, new_credentials, write_secret
from registry.signing import PRIVATE_NAME, PUBLIC_NAME, ensure_keys

# compose.yaml's top-level secret name -> its file in the secrets folder
SECRET_FILES = {
    "store_credentials": "store.json",
    "seaweedfs_identities": "seaweedfs-s3.json",
    "ray_auth_token": "ray_auth_token",
    "registry_signing_key": PRIVATE_NAME,
    "registry_public_key": PUBLIC_NAME,
}


def write_compose_secrets(folder: Path) -> list[Path]:
    """Create the missing secret files in `folder` (0700); returns those written. Present
    ones are kept (a new store key would lock the platform out of its own bucket, a new
    signing key out of its signed models), except SeaweedFS's identities config, which is
    derived again from the store's keys wherever it differs, so server and clients agree."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    written: list[Path] = []
    store = folder / SECRET_FILES["store_credentials"]
    if not store.exists():
        write_secret(store, new_credentials())
        written.append(store)
    access, secret = StoreSettings(credentials_file=store).credentials()
    identities = folder / SECRET_FILES["seaweedfs_identities"]
    config = identities_config(access, secret)
    if not identities.exists() or identities.read_bytes() != config:
        write_secret(identities, config)
        written.append(identities)
    token = folder / SECRET_FILES["ray_auth_token"]
    if not token.exists():
        write_secret(token, secrets.token_hex(32).encode())
        written.append(token)
    private = folder / SECRET_FILES["registry_signing_key"]
    if not private.exists():
        private, public = ensure_keys(folder)
        os.chmod(public, 0o600)  # one owner and mode for every file of the folder
        written += [private, public]
    return written
