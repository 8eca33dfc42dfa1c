"""Optional dependencies, checked where they are used.

The core install reads traces and writes reports. Building and profiling models needs the
``model`` extra (torch, transformers, fvcore, nvtx, pillow), loading many traces in parallel the
``dask`` extra (dask, distributed). Used without them, or with a version older than stagemfu
supports, they would fail deep inside with a traceback (an old transformers lacks an attribute the
model code reads); :func:`require` says instead, in one line, which package and version the task
needs and how to install it. The version bounds are read from stagemfu's installed metadata, so
``pyproject.toml`` stays their only source.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib.util import find_spec

from stagemfu.errors import MissingDependencyError

DISTRIBUTION = "stagemfu"
IMPORT_NAMES = {"pillow": "PIL", "pyyaml": "yaml"}  # modules not named after their distribution
NOT_AN_EXTRA = {"test"}  # extras that install tools for developers, never named to users


@dataclass(frozen=True)
class Declared:
    """How stagemfu declares one dependency: its version specifier (``>=5.24``) and the extra
    that installs it (None for a core dependency)."""

    specifier: str
    extra: str | None


def require(*packages: str, needed_for: str) -> None:
    """Check that each package is installed at a version stagemfu declares, before it is imported.

    Parameters
    ----------
    packages
        Distribution names as ``pyproject.toml`` spells them (``transformers``, ``pillow``).
    needed_for
        What the caller is about to do, for the message ("building a model").

    Raises
    ------
    MissingDependencyError
        A package is missing, or older than its declared lower bound: one line naming the
        package, the version needed, the version found and the pip command.
    """
    message = problem(*packages, needed_for=needed_for)
    if message:
        raise MissingDependencyError(message)


def problem(*packages: str, needed_for: str) -> str | None:
    """What :func:`require` would raise, as a message, or None when every package is usable.

    For a caller that can do without the packages (load traces one after the other instead of
    on Dask) and says so in a note.
    """
    for package in packages:
        wanted = declared().get(_normalize(package))
        spec = f"{package}{wanted.specifier}" if wanted else package
        found = installed_version(package)
        if found is None:
            install = f"'stagemfu[{wanted.extra}]'" if wanted and wanted.extra else f"'{spec}'"
            return f"{needed_for} needs {spec}, which is not installed: pip install {install}"
        if wanted and not _satisfies(found, wanted.specifier):
            return f"{needed_for} needs {spec}, but {package} {found} is installed: pip install --upgrade '{spec}'"
    return None


def installed_version(package: str) -> str | None:
    """The installed version of a distribution: None when its module cannot be found, "" when it
    can but has no metadata (a source checkout on the path), whose version is then not checked."""
    from importlib import metadata  # here, not at the top: start-up time of commands that never check

    name = _normalize(package)
    if find_spec(IMPORT_NAMES.get(name, name.replace("-", "_"))) is None:
        return None
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


@functools.cache
def declared() -> dict[str, Declared]:
    """Every dependency stagemfu's metadata declares, by normalized name (empty when stagemfu runs
    from a source tree that was never installed: then only presence is checked).

    A package declared both in the core and in an extra, or in several extras, keeps its first
    declaration; the developer-only ``test`` extra is never offered to users.
    """
    from importlib import metadata

    from packaging.requirements import Requirement

    try:
        fields = metadata.metadata(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return {}
    extras = [e for e in fields.get_all("Provides-Extra") or [] if e not in NOT_AN_EXTRA]
    out: dict[str, Declared] = {}
    for line in fields.get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        extra = None
        if requirement.marker is not None:
            extra = next((e for e in extras if requirement.marker.evaluate({"extra": e})), None)
            if extra is None:
                continue  # only for developers (the test extra) or for another platform
        out.setdefault(_normalize(requirement.name), Declared(str(requirement.specifier), extra))
    return out


def _satisfies(version: str, specifier: str) -> bool:
    """True when ``version`` meets ``specifier``; a version that cannot be read is given the benefit of the doubt."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    if not version:
        return True
    try:
        return SpecifierSet(specifier).contains(Version(version), prereleases=True)
    except InvalidVersion:
        return True


def _normalize(name: str) -> str:
    """PEP 503 name: ``Pillow``, ``pyyaml`` and ``sqlite_utils`` match their declared spellings."""
    return re.sub(r"[-_.]+", "-", name).lower()
