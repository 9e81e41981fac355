"""`actionmesh token add|list`: bearer tokens in the identities file.

`add` makes a fresh token (256 random bits), appends its SHA-256 with the identity and scopes
to the file and prints the token once: it is stored nowhere else, so a lost token is replaced,
not recovered. Running coordinators pick the change up within a second. `list` shows who holds
tokens, never a token. Exit codes: 0 done, 1 an identities file that cannot be used, 2 bad
flags.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from service.runtime import secrets
from service.runtime.command_settings import TokenSettings
from service.runtime.identities_file import (
    IdentitiesFileError,
    append_token,
    parse_scopes,
    read_identities,
)


def main(settings: TokenSettings, action: str) -> int:
    path = secrets.identities_path(settings.identities_file, settings.secrets_dir)
    if path is None:
        where = f" ({settings.secrets_dir}/{secrets.IDENTITIES})" if settings.secrets_dir else ""
        if action == "list" or settings.secrets_dir is None:
            print(
                f"actionmesh token {action}: no identities file{where}; pass --identities-file "
                "or --secrets-dir",
                file=sys.stderr,
            )
            return 2 if settings.secrets_dir is None else 1
        path = settings.secrets_dir / secrets.IDENTITIES
    try:
        return _add(settings, path) if action == "add" else _list(settings, path)
    except IdentitiesFileError as exc:
        print(f"actionmesh token {action}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"actionmesh token {action}: {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1


def _add(settings: TokenSettings, path: Path) -> int:
    if not settings.identity:
        print(
            "actionmesh token add: --identity is required (who the token proves)", file=sys.stderr
        )
        return 2
    scopes = parse_scopes(settings.scopes, "--scopes")
    token = append_token(path, settings.identity, scopes)
    names = sorted(s.value for s in scopes)
    if settings.json_output:
        print(
            json.dumps(
                {
                    "identity": settings.identity,
                    "scopes": names,
                    "identities_file": str(path),
                    "token": token,
                }
            )
        )
    else:
        print(
            f"added a token for {settings.identity} (scopes {','.join(names)}) to {path}",
            file=sys.stderr,
        )
        print("it is shown once; send it as `authorization: Bearer <token>`:", file=sys.stderr)
        print(token)
    return 0


def _list(settings: TokenSettings, path: Path) -> int:
    identities = read_identities(path)
    rows = [
        {
            "identity": i.name,
            "scopes": sorted(s.value for s in i.scopes),
            "via": "token",
            "sha256_prefix": digest[:12],
        }
        for digest, i in identities.tokens.items()
    ] + [
        {
            "identity": i.name,
            "scopes": sorted(s.value for s in i.scopes),
            "via": "certificate",
            "sha256_prefix": "",
        }
        for i in identities.certificates.values()
    ]
    if settings.json_output:
        print(json.dumps({"identities_file": str(path), "identities": rows}))
        return 0
    for row in rows:
        print(
            f"{row['identity']:<24} {row['via']:<12} {','.join(row['scopes']):<24} "
            f"{row['sha256_prefix']}"
        )
    return 0
