"""The app of an image: its config's Entrypoint + Cmd, Env, WorkingDir and User, each overridden by the recipe.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from tailor.errors import TailorError
from tailor.image.cache import Image


def _user_name(tree: Path, user: str, where: str) -> str | None:
    """The passwd name of an image ``User`` (name, uid, name:group or uid:gid); None for root."""
    who = user.split(":", 1)[0]
    if who in ("", "0", "root"):
        return None
    passwd = tree / "etc" / "passwd"
    lines = passwd.read_text(errors="replace").splitlines() if passwd.is_file() and not passwd.is_symlink() else []
    for line in lines:
        f = line.split(":")
        if len(f) >= 3 and (f[0] == who or f[2] == who):
            return f[0]
    raise TailorError(f"{where}: the image's User {user!r} is not in its /etc/passwd; set app.user in the recipe")


def app_from_config(app, given: tuple[str, ...], config: dict, tree: Path, where: str):
    """*app* (an AppSpec) completed from the image *config*: each recipe key in *given* wins over the image."""
    cfg = config.get("config") or {}
    entrypoint = list(cfg.get("Entrypoint") or [])
    cmd = list(cfg.get("Cmd") or [])
    changes = {}
    if "command" in given:
        argv = [app.command] + (list(app.args) if "args" in given else [])
    elif "args" in given:
        argv = (entrypoint or []) + list(app.args)
        if not entrypoint:
            argv = list(app.args)
    else:
        argv = entrypoint + cmd
    if not argv:
        raise TailorError(f"{where}: the image has no Entrypoint or Cmd; set app.command in the recipe")
    changes["command"], changes["args"] = str(argv[0]), tuple(str(a) for a in argv[1:])
    env = {}
    for item in cfg.get("Env") or []:
        k, _, v = str(item).partition("=")
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
            env[k] = v
    env.update(dict(app.env))
    changes["env"] = tuple(env.items())
    if "workdir" not in given and cfg.get("WorkingDir"):
        changes["workdir"] = cfg["WorkingDir"]
    if "user" not in given and cfg.get("User"):
        changes["user"] = _user_name(tree, str(cfg["User"]), where)
    return replace(app, **changes)


def image_summary(img: Image) -> dict:
    return {"reference": img.ref.text, "digest": img.digest, "manifest": img.manifest_digest,
            "config": img.config_digest, "layers": [layer["digest"] for layer in img.manifest["layers"]]}
