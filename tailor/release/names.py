"""Names and places of a release: its version, its directories, the .deb maintainer, its templates.

Shared by every module of :mod:`tailor.release`; it imports none of them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tailor import __version__, paths
from tailor.errors import TailorError
from tailor.records import release as release_record
from tailor.templates import TEMPLATES_DIR
from tailor.templates import render as render_template

RELEASE_FORMAT = str(release_record.RELEASE_FORMAT)
"""The release tree's version (:data:`tailor.records.release.RELEASE_FORMAT`, the manifest's ``format``),
as the release tasks' up-to-date check takes it."""

TEMPLATE_DIR = "release"
"""Templates of this stage, under ``templates/``."""

VERSION_RE = re.compile(r"^[0-9][A-Za-z0-9.+~]*$")
"""A release version: a Debian upstream version without a revision (it is also a directory name)."""

DEFAULT_MAINTAINER = "tailor release <tailor@example.org>"
"""The .deb's Maintainer unless ``TAILOR_DEB_MAINTAINER`` says otherwise."""

SUMS_NAME = "SHA256SUMS"
"""The checksum file of a release version (``sha256sum -c`` format)."""

MEASURED_KEY = "boot_test"
"""The section of manifest.json that is the boot test's measurement rather than a function of the inputs."""

MEASURED_KEYS = (MEASURED_KEY, "snapshot")
"""Every section of manifest.json that one run captured (the boot test's times, the ready snapshot's
record): left out of the bit-for-bit comparison of two builds."""


def release_version() -> str:
    """The release version: ``$TAILOR_RELEASE_VERSION`` or tailor's own version."""
    version = os.environ.get("TAILOR_RELEASE_VERSION") or __version__
    check_version(version)
    return version


def check_version(version: str) -> str:
    """Return *version* if it can name a release (and a .deb version); else a TailorError."""
    if not VERSION_RE.match(version or ""):
        raise TailorError(f"TAILOR_RELEASE_VERSION={version!r}: a release version starts with a digit and has "
                          f"only letters, digits and . + ~ (e.g. 0.1.0)")
    return version


def app_release_dir(app: str, version: str) -> Path:
    """``out/release/<version>/<app>``: one app's release."""
    return paths.release_dir(version) / app


def manifest_path(app: str, version: str) -> Path:
    """An app's release manifest (the release task's target; written last but SHA256SUMS)."""
    return app_release_dir(app, version) / "manifest.json"


def maintainer() -> str:
    """The .deb's Maintainer field: ``$TAILOR_DEB_MAINTAINER`` or :data:`DEFAULT_MAINTAINER`."""
    value = os.environ.get("TAILOR_DEB_MAINTAINER") or DEFAULT_MAINTAINER
    if not re.match(r"^[^<>\n]+ <[^<>@\s]+@[^<>@\s]+>$", value):
        raise TailorError(f"TAILOR_DEB_MAINTAINER={value!r}: must look like 'Full Name <address@domain>'")
    return value


def render(template: str, **values) -> str:
    """Render ``templates/release/<template>`` (see :func:`tailor.templates.render`)."""
    return render_template(f"{TEMPLATE_DIR}/{template}", **values)


def template_files() -> list[Path]:
    """Every template of this stage (a release task depends on them)."""
    return sorted((TEMPLATES_DIR / TEMPLATE_DIR).glob("*.j2"))
