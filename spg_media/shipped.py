"""The files shipped inside the package, and `spg-media init`, which writes a starting set of them.

`spg_media/data/` holds, as symlinks in the repository (one copy of each file), the example
config `spg.example.toml` and the Kamailio configuration `kamailio/`; the wheel carries them as
plain files, so an installed `spg-media` has them without the repository.

`write_starter_files(directory)` writes `spg.toml` (the example, with fresh random
`gateway.secret` and `handoff.signing_secret`, mode 0600) and `kamailio/` (the cfg, an example
dispatcher list, the tls.cfg example and its README). It writes nothing when one of them already
exists, unless asked to overwrite.
"""

from __future__ import annotations

import os
import re
import secrets
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

__all__ = [
    "KAMAILIO_FILES",
    "StarterError",
    "example_config",
    "kamailio_file",
    "starter_config",
    "write_starter_files",
]

KAMAILIO_FILES = (
    "kamailio.cfg",
    "dispatcher.list",
    "tls.cfg.example",
    "callcenter-proxy.cfg",
    "README.md",
)

# The keys `init` fills with a fresh random value: (TOML table, key).
_SECRETS = (("gateway", "secret"), ("handoff", "signing_secret"))

_HEADER = """\
# Written by `spg-media init`. Every key is shown with its default, except two fresh random
# secrets: keep this file private (it is written with mode 0600).
#   gateway.secret          signs the requests to the payment platform and the result callbacks;
#                           with connector = "http" replace it by the secret the platform gives you
#   handoff.signing_secret  transferred INVITEs must carry a valid X-SPG-Signature made with it:
#                           give it to the call-center platform, or set "" to accept unsigned
#                           transfers from sip.trusted_sources
#
"""


class StarterError(Exception):
    """Why the starting files cannot be written: one line for the CLI."""


def _data() -> Traversable:
    return files("spg_media") / "data"


def example_config() -> str:
    """The text of spg.example.toml: every key with its default and what it means."""
    return (_data() / "spg.example.toml").read_text(encoding="utf-8")


def kamailio_file(name: str) -> str:
    """The text of one of the shipped Kamailio files (`KAMAILIO_FILES`)."""
    if name not in KAMAILIO_FILES:
        raise ValueError(f"not a shipped Kamailio file: {name!r}")
    return (_data() / "kamailio" / name).read_text(encoding="utf-8")


def starter_config(token: str | None = None) -> str:
    """The example config with a header and a fresh random value for each secret (`token`, for
    tests, gives every secret that value)."""
    text = example_config()
    section = ""
    lines = []
    filled: set[tuple[str, str]] = set()
    for line in text.splitlines(keepends=True):
        table = re.match(r"\[(\w+)\]\s*$", line)
        if table:
            section = table.group(1)
        key = re.match(r'(\w+)\s*=\s*""', line)
        if key and (section, key.group(1)) in _SECRETS:
            value = token if token is not None else secrets.token_urlsafe(32)
            line = line.replace('""', f'"{value}"', 1)
            filled.add((section, key.group(1)))
        lines.append(line)
    missing = [f"{s}.{k}" for s, k in _SECRETS if (s, k) not in filled]
    if missing:  # the shipped example changed shape: say so rather than write a secret-less file
        raise StarterError(f"spg.example.toml has no empty {', '.join(missing)} to fill")
    return _HEADER + "".join(lines)


def write_starter_files(directory: str | Path, force: bool = False) -> list[Path]:
    """Write spg.toml and kamailio/* under `directory` (created if missing); the paths written.
    Nothing is written when one exists already, unless `force`."""
    root = Path(directory)
    if root.exists() and not root.is_dir():
        raise StarterError(f"{root}: exists and is not a directory")
    plan: list[tuple[Path, str, int]] = [(root / "spg.toml", starter_config(), 0o600)]
    plan += [(root / "kamailio" / name, kamailio_file(name), 0o644) for name in KAMAILIO_FILES]
    if not force:
        for path, _, _ in plan:
            if path.exists() or path.is_symlink():
                raise StarterError(f"{path} exists: not overwritten (--force overwrites)")
    written = []
    try:
        for path, text, mode in plan:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write(path, text, mode)
            written.append(path)
    except OSError as exc:
        where = exc.filename or root
        raise StarterError(f"cannot write {where}: {exc.strerror or exc}") from None
    return written


def _write(path: Path, text: str, mode: int) -> None:
    """Write through a new file renamed into place: the mode holds from the first byte (a
    secret is never readable by others, even over an existing file with a wider mode)."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(temporary, mode)  # whatever the umask
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
