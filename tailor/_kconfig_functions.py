"""Kconfig preprocessor functions that tailor overrides while kconfiglib parses a kernel tree.

kconfiglib imports the module named by ``$KCONFIG_FUNCTIONS`` and merges its
``functions`` into the preprocessor. tailor replaces ``$(shell,...)`` so that
the helper commands of ``scripts/Kconfig.include`` (``cc-option`` creates
``.tmp_$$`` directories in the current directory) run in a private scratch
directory instead of wherever the user started tailor, as kbuild runs them in
its object tree.
"""

from __future__ import annotations

import subprocess
import tempfile


def _shell(kconf, _name, command):
    with tempfile.TemporaryDirectory(prefix="tailor-kconfig-") as scratch:
        proc = subprocess.run(command, shell=True, cwd=scratch, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    out = proc.stdout.decode("utf-8", "replace")
    # Same normalisation as kbuild's and kconfiglib's: newlines become spaces.
    return "\n".join(out.splitlines()).rstrip("\n").replace("\n", " ")


functions = {"shell": (_shell, 1, 1)}
