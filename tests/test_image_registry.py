"""Images in, microVMs out, end to end (slow): a real registry, real images, real kernels, real boots.

A Debian ``docker-registry`` runs on 127.0.0.1 (a free port, a temporary
storage directory, plain HTTP) for the module and is stopped afterwards. The
redis image is built by tailor from Debian packages (images/redis.yaml:
redis-server and its libraries, Entrypoint + Cmd) and pushed with skopeo.
Then ``doit build:<app>`` pulls it by digest, boots it and probes it with
PING/SET/GET. The recipes use the redis recipe's kernel options, so their
kernels are the very ones tests/test_pipeline.py builds (same config identity:
nothing extra is compiled). The ``oci:`` case is the shipped recipe
recipes/redis-image.yaml; the ``docker-archive:`` case converts the same
image with skopeo.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import project_copy, run_doit

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def registry():
    """``host:port`` of a plain-HTTP docker-registry on the loopback, with temporary storage."""
    storage = Path(tempfile.mkdtemp(prefix="tailor-registry-"))
    port = free_port()
    config = storage / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {storage / 'data'}\n"
                      f"http:\n  addr: 127.0.0.1:{port}\nlog:\n  level: error\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None, "docker-registry exited"
                assert time.monotonic() < deadline, "docker-registry did not answer within 30 s"
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(storage, ignore_errors=True)


def push(layout: Path, tag: str, dest: str) -> None:
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:{tag}", f"docker://{dest}"],
                   check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory, linux_tree):
    """A project copy sharing src/, kernel/ and cache/ with the real out/; the redis image built into it."""
    project = project_copy(tmp_path_factory.mktemp("project") / "tailor")
    (project / "images.lock").unlink(missing_ok=True)
    proc = run_doit(project, "image:redis")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return project


@pytest.fixture(scope="module")
def pushed(project, registry):
    """The redis image in the registry: (reference without digest, digest)."""
    push(project / "out/images/redis", "7.0", f"{registry}/tailor/redis:7.0")
    sys.path.insert(0, str(ROOT))
    from tailor import image

    ref = f"docker://{registry}/tailor/redis:7.0"
    return ref, image.resolve(image.parse_reference(ref), "test")


def recipe_from_redis(image_ref: str, general: bool = True) -> str:
    """recipes/redis.yaml's kernel, test and network, with the rootfs and app coming from the image."""
    text = (ROOT / "recipes/redis.yaml").read_text()
    kernel = text[text.index("kernel:"):text.index("rootfs:")]
    return (f"description: redis from {image_ref}\n{kernel}rootfs:\n  image: {image_ref}\napp:\n  network: true\n"
            f"test:\n  ready: Ready to accept connections\n  probe: {{type: redis, port: 6379}}\n"
            f"general: {'true' if general else 'false'}\n")


def passed(project: Path, app: str) -> dict:
    result = json.loads((project / f"out/boot/{app}/result.json").read_text())
    assert result["pass"] is True, result
    assert result["probe"]["type"] == "redis" and "GET" in result["probe"]["detail"]
    return result


def test_registry_image_by_digest_boots_on_its_own_kernel_and_the_general_kernel(project, pushed):
    ref, digest = pushed
    (project / "recipes/redis-registry.yaml").write_text(recipe_from_redis(f"{ref}@{digest}"))
    proc = run_doit(project, "build:redis-registry", "build:redis-registry@general")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    passed(project, "redis-registry")
    passed(project, "redis-registry@general")
    manifest = json.loads((project / "out/rootfs/redis-registry/rootfs.json").read_text())
    assert manifest["image"]["digest"] == digest and manifest["argv"][0] == "/usr/bin/redis-server"
    # the same kernels as the package-based redis recipe: one config identity each
    assert run_doit(project, "config:redis").returncode == 0
    assert (project / "out/config/redis-registry/identity").read_text() == \
        (project / "out/config/redis/identity").read_text()
    console = (project / "out/boot/redis-registry/console.log").read_text()
    assert "tailor-init: exec /usr/bin/redis-server" in console


def test_unpinned_registry_reference_is_recorded_once_and_moved_only_by_pin_image(project, pushed, registry,
                                                                                 run_tailor):
    ref, digest = pushed
    (project / "recipes/redis-unpinned.yaml").write_text(recipe_from_redis(ref, general=False))
    env = {"TAILOR_OUT": str(project / "out")}
    proc = run_tailor("rootfs", "redis-unpinned", cwd=project, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((project / "images.lock").read_text())[ref] == {"digest": digest}
    # another image under the same tag: builds keep the pinned digest until pin-image moves it
    other = project / "out/other-layout"
    shutil.copytree(project / "out/images/redis", other)
    index = json.loads((other / "index.json").read_text())
    sys.path.insert(0, str(ROOT))
    from tailor import image
    from tailor.image import build as image_build

    layer = other / "layer.tar"
    shutil.copy(other / "blobs/sha256" / json.loads(
        (other / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_text())["layers"][0]["digest"][7:], layer)
    image_build.write_layout(other, "7.0", [layer], image_build.image_config(entrypoint=["/usr/bin/redis-server"],
                                                                  cmd=["--port", "7000"]))
    push(other, "7.0", f"{registry}/tailor/redis:7.0")
    proc = run_tailor("rootfs", "redis-unpinned", cwd=project, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((project / "out/rootfs/redis-unpinned/rootfs.json").read_text())["image"]["digest"] == digest
    proc = run_tailor("pin-image", "redis-unpinned", cwd=project, env=env)
    assert proc.returncode == 0 and f"(was {digest})" in proc.stdout, proc.stdout + proc.stderr
    moved = json.loads((project / "images.lock").read_text())[ref]["digest"]
    assert moved != digest
    push(project / "out/images/redis", "7.0", f"{registry}/tailor/redis:7.0")  # put the tag back


def test_oci_layout_recipe_shipped_builds_its_image_first(project):
    """recipes/redis-image.yaml: doit image:redis, then the rootfs from oci:out/images/redis:7.0 (no registry)."""
    proc = run_doit(project, "build:redis-image")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    passed(project, "redis-image")
    assert "oci:out/images/redis:7.0" in json.loads((project / "images.lock").read_text())


def test_docker_archive_recipe_boots(project):
    subprocess.run(["skopeo", "copy", "-q", f"oci:{project / 'out/images/redis'}:7.0",
                    f"docker-archive:{project / 'redis-archive.tar'}:tailor/redis:7.0"], check=True, capture_output=True)
    (project / "recipes/redis-archive.yaml").write_text(recipe_from_redis("docker-archive:redis-archive.tar",
                                                                          general=False))
    proc = run_doit(project, "build:redis-archive")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    passed(project, "redis-archive")


@pytest.mark.parametrize("case", ["unknown-repository", "unknown-tag", "wrong-digest", "arm64"])
def test_bad_registry_references_fail_in_one_line_and_leave_nothing(case, project, pushed, registry, run_tailor,
                                                                     tmp_path):
    ref, digest = pushed
    wrong = "sha256:" + "0" * 64
    image_ref = {
        "unknown-repository": f"docker://{registry}/tailor/nothing:7.0@{digest}",
        "unknown-tag": f"docker://{registry}/tailor/redis:9.9",
        "wrong-digest": f"docker://{registry}/tailor/redis:7.0@{wrong}",
        "arm64": f"docker://{registry}/tailor/arm64:1",
    }[case]
    if case == "arm64":
        push(ROOT / "tests/data/images/arm64", "1", f"{registry}/tailor/arm64:1")
    expect = {
        "unknown-repository": f"registry {registry} has no manifest {digest} in that repository; check the digest "
                              f"(in the recipe or images.lock) and the name",
        "unknown-tag": f"unknown repository or tag in registry {registry}; check the name and tag",
        "wrong-digest": f"registry {registry} has no manifest {wrong} in that repository; check the digest "
                        f"(in the recipe or images.lock) and the name",
        "arm64": "the image is linux/arm64; the recipe builds linux/amd64 microVMs (arch: x86_64); use an image "
                 "with a linux/amd64 variant or set the recipe's arch to the image's",
    }[case]
    (project / f"recipes/bad-{case}.yaml").write_text(recipe_from_redis(image_ref, general=False))
    out = tmp_path / "out"
    (out / "cache").mkdir(parents=True)
    (out / "cache/debs").symlink_to(project / "out/cache/debs")
    lock_before = (project / "images.lock").read_text() if (project / "images.lock").exists() else None
    proc = run_tailor("rootfs", f"bad-{case}", cwd=project, env={"TAILOR_OUT": str(out)})
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tailor: error: ")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert errors == [f"tailor: error: recipes/bad-{case}.yaml: rootfs.image: {image_ref}: {expect}"], proc.stderr
    assert not (out / "rootfs").exists() or not list((out / "rootfs").rglob("rootfs.*"))
    cached = out / "cache/oci/index.json"
    assert not cached.exists() or "arm64" not in cached.read_text()
    assert not list((out / "cache/oci").glob(".fetch-*")) if (out / "cache/oci").exists() else True
    now = (project / "images.lock").read_text() if (project / "images.lock").exists() else None
    assert now == lock_before, "a failing reference must not be pinned"


def oci_index(dest: Path, layouts: dict[str, Path]) -> None:
    """An OCI layout at *dest* whose tag ``1`` is an index of each layout's image, by architecture."""
    import hashlib

    dest.mkdir()
    (dest / "blobs/sha256").mkdir(parents=True)
    manifests = []
    for arch, layout in layouts.items():
        for blob in (layout / "blobs/sha256").iterdir():
            shutil.copy(blob, dest / "blobs/sha256" / blob.name)
        m = json.loads((layout / "index.json").read_text())["manifests"][0]
        manifests.append({"mediaType": m["mediaType"], "digest": m["digest"], "size": m["size"],
                          "platform": {"architecture": arch, "os": "linux"}})
    data = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": manifests}, sort_keys=True).encode()
    digest = hashlib.sha256(data).hexdigest()
    (dest / "blobs/sha256" / digest).write_bytes(data)
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": f"sha256:{digest}", "size": len(data),
        "annotations": {"org.opencontainers.image.ref.name": "1"}}]}))


def test_docker_schema2_and_multi_platform_images_are_verified_and_unpacked(project, registry, tmp_path,
                                                                            monkeypatch):
    """What public registries serve: Docker schema-2 manifests and indexes of several platforms."""
    sys.path.insert(0, str(ROOT))
    from tailor import image
    from tailor.errors import TailorError

    redis = project / "out/images/redis"
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", "--format", "v2s2", f"oci:{redis}:7.0",
                    f"docker://{registry}/tailor/redis-v2s2:1"], check=True, capture_output=True)
    oci_index(tmp_path / "multi", {"arm64": ROOT / "tests/data/images/arm64", "amd64": redis})
    oci_index(tmp_path / "armonly", {"arm64": ROOT / "tests/data/images/arm64"})
    for name in ("multi", "armonly"):
        subprocess.run(["skopeo", "copy", "-q", "--all", "--dest-tls-verify=false", f"oci:{tmp_path / name}:1",
                        f"docker://{registry}/tailor/redis-{name}:1"], check=True, capture_output=True)
    monkeypatch.setenv("TAILOR_OUT", str(tmp_path / "out"))
    for name, manifest_type in (("v2s2", image.DOCKER_MANIFEST), ("multi", image.OCI_MANIFEST)):
        ref = image.parse_reference(f"docker://{registry}/tailor/redis-{name}:1")
        img = image.fetch(ref, image.resolve(ref, "t"), "t")
        assert img.manifest["mediaType"] == manifest_type and img.config["architecture"] == "amd64"
        tree = tmp_path / f"tree-{name}"
        image.unpack(img, tree, "t")
        assert (tree / "usr/bin/redis-server").exists() and img.config["config"]["Entrypoint"] == ["/usr/bin/redis-server"]
    ref = image.parse_reference(f"docker://{registry}/tailor/redis-armonly:1")
    with pytest.raises(TailorError, match=r"the image has no linux/amd64 variant \(it has linux/arm64\); "
                                          r"the recipe builds linux/amd64 microVMs \(arch: x86_64\)"):
        image.fetch(ref, image.resolve(ref, "t"), "t")
    for name in ("armonly", "multi"):  # an arm64 recipe takes the linux/arm64 image of the same references
        ref = image.parse_reference(f"docker://{registry}/tailor/redis-{name}:1")
        assert image.fetch(ref, image.resolve(ref, "t"), "t", "arm64").config["architecture"] == "arm64"


def test_image_user_env_and_workdir_reach_the_app_on_the_general_kernel(project, registry, tmp_path):
    """An image whose config sets User, Env and WorkingDir: the init runs the app as that user (su needs
    MULTIUSER, so this recipe uses the general kernel's base, the same config as every general variant)."""
    sys.path.insert(0, str(ROOT))
    from tailor import image
    from tailor.image import build as image_build

    base = image_build.load_spec(ROOT / "images/redis.yaml")
    spec = image_build.ImageSpec(name="redis-user", path=tmp_path / "redis-user.yaml", tag="1", packages=base.packages,
                           keep=base.keep, entrypoint=base.entrypoint, cmd=base.cmd,
                           env=(("REDIS_IMAGE", "with-user"),), workdir="/tmp", user="redis")
    layout = tmp_path / "redis-user"
    image_build.build_from_packages(spec, layout)
    push(layout, "1", f"{registry}/tailor/redis-user:1")
    ref = f"docker://{registry}/tailor/redis-user:1"
    digest = image.resolve(image.parse_reference(ref), "test")
    text = recipe_from_redis(f"{ref}@{digest}", general=False)
    text = text[:text.index("kernel:")] + "kernel:\n  base: [lupine-base, lupine-general]\n" + text[text.index("rootfs:"):]
    (project / "recipes/redis-user.yaml").write_text(text)
    proc = run_doit(project, "build:redis-user")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    passed(project, "redis-user")
    assert run_doit(project, "config:redis@general").returncode == 0
    assert (project / "out/config/redis-user/identity").read_text() == \
        (project / "out/config/redis@general/identity").read_text()
    console = (project / "out/boot/redis-user/console.log").read_text()
    assert "tailor-init: exec /usr/bin/redis-server" in console
    init = subprocess.run(["debugfs", "-R", "cat /init", str(project / "out/rootfs/redis-user/rootfs.ext2")],
                          capture_output=True).stdout.decode()
    assert "su -p -s /bin/sh redis -c" in init and "export REDIS_IMAGE=with-user" in init and "cd /tmp" in init


def httpd_image(dest: Path) -> None:
    """An OCI layout at *dest* (tag ``1``) that is not made by tailor: one layer with a static busybox and
    ``/www/index.html``, Entrypoint ``busybox httpd -f -p 8080 -h /www`` (a page the app serves from the image)."""
    import hashlib
    import io
    import tarfile

    def blob(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (dest / "blobs/sha256" / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    (dest / "blobs/sha256").mkdir(parents=True)
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in (("bin", None, 0o755), ("bin/busybox", Path("/bin/busybox").read_bytes(), 0o755),
                                 ("www", None, 0o755), ("www/index.html", HOLDOUT_PAGE.encode(), 0o644)):
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = mode, 1700000000
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    layer_desc = blob(layer.getvalue())
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
              "config": {"Entrypoint": ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]}}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           **blob(json.dumps(config, sort_keys=True).encode())},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer_desc}]}
    desc = blob(json.dumps(manifest, sort_keys=True).encode())
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **desc,
        "annotations": {"org.opencontainers.image.ref.name": "1"}}]}))


HOLDOUT_PAGE = "<h1>served from the image's own /www</h1>\n"


def test_an_image_runs_as_it_is_and_a_slim_one_says_what_it_dropped(project, registry, tmp_path):
    """A busybox httpd image serving /www, named by digest with nothing else but app.network: the whole
    image is kept, the VM serves the page; the same image with rootfs.slim: true fails, and its one-line
    error names /www and the fix."""
    sys.path.insert(0, str(ROOT))
    from tailor import image

    httpd_image(tmp_path / "httpd")
    push(tmp_path / "httpd", "1", f"{registry}/tailor/httpd:1")
    ref = f"docker://{registry}/tailor/httpd:1"
    pinned = f"{ref}@{image.resolve(image.parse_reference(ref), 'test')}"
    (project / "recipes/holdout.yaml").write_text(f"rootfs:\n  image: {pinned}\napp:\n  network: true\n")
    proc = run_doit(project, "build:holdout")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert json.loads((project / "out/rootfs/holdout/rootfs.json").read_text())["slim"] is False
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "TAILOR_OUT"}
    run = [sys.executable, "-m", "tailor", "run", "holdout", "-p", f"{port}:8080", "--detach", "--name", "holdout"]
    started = subprocess.run(run, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    try:
        assert started.returncode == 0, started.stderr
        deadline, body = time.monotonic() + 60, ""
        while time.monotonic() < deadline and body != HOLDOUT_PAGE:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
            except OSError:
                time.sleep(0.5)
        assert body == HOLDOUT_PAGE
    finally:
        subprocess.run([sys.executable, "-m", "tailor", "stop", "holdout"], cwd=project, env=env, timeout=120)
    (project / "recipes/holdout-slim.yaml").write_text(
        f"rootfs:\n  image: {pinned}\n  slim: true\napp:\n  network: true\n"
        f"test:\n  probe: {{type: http, port: 8080}}\n  timeout: 60\ngeneral: false\n")
    proc = run_doit(project, "build:holdout-slim")
    assert proc.returncode != 0
    [line] = [ln for ln in proc.stderr.splitlines() if "boot test of holdout-slim failed" in ln]
    assert re.search(r"\(rootfs\.slim dropped \d+ of the image's files: the console names /www, which slim dropped; "
                     r"set rootfs\.slim: false in recipes/holdout-slim\.yaml", line), line
    dropped = json.loads((project / "out/rootfs/holdout-slim/slim.json").read_text())
    assert "/www/index.html" in dropped["dropped"] and "/www" in dropped["dropped_dirs"]
    # slim: traced keeps what the app used in its boot test: the page the probe fetched
    (project / "recipes/holdout-traced.yaml").write_text(
        f"rootfs:\n  image: {pinned}\n  slim: traced\napp:\n  network: true\n"
        f"test:\n  probe: {{type: http, port: 8080, body: served from the image}}\n  timeout: 60\ngeneral: false\n")
    proc = run_doit(project, "build:holdout-traced")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    kept = json.loads((project / "out/slim/holdout-traced/kept.json").read_text())
    why = {e["path"]: e["why"] for e in kept["paths"]}
    assert why.get("/www/index.html") == "read" and why.get("/bin/busybox") == "read", why
    assert kept["trials"] >= 1 and kept["slim"]["files"] < kept["whole"]["files"]
    assert not (project / "out/slim/holdout-traced/whole").exists()  # removed once the list was verified
    assert json.loads((project / "out/boot/holdout-traced/result.json").read_text())["pass"] is True
