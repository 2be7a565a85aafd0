"""The lab's Debian 12 systemd base image, built locally with debootstrap.

No image registry is reachable here, so the image is made from Debian's packages and imported
into podman. Its tag is the hash of its recipe (suite, variant, packages, setup script): the
image is built once, reused while the recipe is unchanged, and rebuilt when it changes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from opsledger.errors import OpsledgerError, Problem
from opsledger.lab import cache
from opsledger.lab.podman import podman

IMAGE_NAME = "localhost/opsledger-base"
SUITE = "bookworm"
VARIANT = "minbase"
# What Ansible, systemd-in-container and sshd need; roles install everything else themselves.
PACKAGES = (
    "python3",
    "python3-apt",
    "openssh-server",
    "systemd",
    "systemd-sysv",
    "dbus",
    "iproute2",
    "sudo",
    "procps",
    "ca-certificates",
    "less",
)
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"


@dataclass(frozen=True)
class ImageRecipe:
    """Everything that decides the image's content; its hash is the image tag."""

    suite: str
    variant: str
    packages: tuple[str, ...]
    setup_script: str
    mirror: str
    security_mirror: str
    cache_url: str = cache.CACHE_URL

    @property
    def digest(self) -> str:
        # Mirrors are left out: the same packages from another mirror are the same image. The
        # cache URL is baked into the image's apt settings, so it is part of the recipe.
        text = "\n".join(
            [self.suite, self.variant, " ".join(self.packages), self.setup_script, self.cache_url]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def ref(self) -> str:
        return f"{IMAGE_NAME}:{self.digest}"


def host_mirrors(sources_dir: Path = Path("/etc/apt")) -> tuple[str, str]:
    """Debian mirrors this machine's apt uses, so the image is built from the same reachable ones.

    $OPSLEDGER_DEBIAN_MIRROR and $OPSLEDGER_DEBIAN_SECURITY_MIRROR override them.
    """
    mirror = security = None
    texts = []
    for path in [sources_dir / "sources.list", *sorted(sources_dir.glob("sources.list.d/*"))]:
        if path.is_file():
            texts.append(path.read_text(errors="replace"))
    for url in re.findall(r"(?:URIs:|deb(?:\s+\[[^\]]*\])?)\s+(https?://\S+)", "\n".join(texts)):
        url = url.rstrip("/")
        if url.endswith("/debian-security") and not security:
            security = url
        elif url.endswith("/debian") and not mirror:
            mirror = url
    return (
        os.environ.get("OPSLEDGER_DEBIAN_MIRROR") or mirror or DEFAULT_MIRROR,
        os.environ.get("OPSLEDGER_DEBIAN_SECURITY_MIRROR") or security or DEFAULT_SECURITY_MIRROR,
    )


def default_recipe() -> ImageRecipe:
    script = resources.files("opsledger.lab").joinpath("files/image-setup.sh").read_text()
    mirror, security = host_mirrors()
    return ImageRecipe(SUITE, VARIANT, PACKAGES, script, mirror, security)


def image_exists(ref: str) -> bool:
    return podman("image", "exists", ref, check=False).returncode == 0


def build_image(recipe: ImageRecipe, *, workdir: Path | None = None) -> str:
    """debootstrap the recipe into a temporary root, set it up in a chroot, podman import it."""
    if shutil.which("debootstrap") is None:
        raise OpsledgerError(
            Problem(
                "debootstrap is not installed",
                fix="apt-get install debootstrap (lab up does this as root)",
            )
        )
    with tempfile.TemporaryDirectory(prefix="opsledger-image-", dir=workdir or "/var/tmp") as tmp:
        root = Path(tmp) / "rootfs"
        cmd = [
            "debootstrap",
            f"--variant={recipe.variant}",
            f"--include={','.join(recipe.packages)}",
            recipe.suite,
            str(root),
            recipe.mirror,
        ]
        env = dict(os.environ)
        if cache.answers("127.0.0.1"):
            # through the lab's package cache: a rebuilt image downloads nothing twice
            env["http_proxy"] = f"http://127.0.0.1:{cache.CACHE_PORT}"
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            raise OpsledgerError(
                Problem(
                    f"debootstrap failed: {' | '.join(tail)}",
                    field="image",
                    fix=f"check that {recipe.mirror} is reachable, or set OPSLEDGER_DEBIAN_MIRROR",
                )
            )
        setup = root / "tmp" / "image-setup.sh"
        setup.write_text(recipe.setup_script)
        proc = subprocess.run(
            [
                "chroot",
                str(root),
                "/bin/sh",
                "/tmp/image-setup.sh",
                recipe.mirror,
                recipe.security_mirror,
                recipe.cache_url,
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        if proc.returncode != 0:
            raise OpsledgerError(
                Problem(
                    f"image setup failed: {proc.stderr.strip()[-300:]}",
                    field="image",
                    fix="see lab/files/image-setup.sh",
                )
            )
        setup.unlink(missing_ok=True)
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", "-", "."],
            stdout=subprocess.PIPE,
        )
        try:
            podman(
                "import",
                "--change",
                'CMD ["/sbin/init"]',
                "--change",
                "STOPSIGNAL=SIGRTMIN+3",
                "--change",
                "ENV=container=podman",
                "--change",
                f"LABEL=io.opsledger.recipe={recipe.digest}",
                "-",
                recipe.ref,
                stdin=tar.stdout,
            )
        finally:
            if tar.stdout:
                tar.stdout.close()
            tar.wait()
    return recipe.ref


LATEST = f"{IMAGE_NAME}:latest"


def ensure_image(recipe: ImageRecipe) -> tuple[str, bool]:
    """Return (image ref, built now?): reuse the cached image while the recipe is unchanged.

    The image is also tagged `latest`, the stable name Molecule scenarios use.
    """
    built = not image_exists(recipe.ref)
    if built:
        build_image(recipe)
    podman("tag", recipe.ref, LATEST)
    return recipe.ref, built


def remove_images() -> list[str]:
    """Remove every opsledger base image (used by `lab down --purge`)."""
    out = podman(
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        "--filter",
        f"reference={IMAGE_NAME}",
        check=False,
    ).stdout
    refs = [line for line in out.split() if line.startswith(IMAGE_NAME)]
    for ref in refs:
        podman("rmi", "--force", ref, check=False)
    return refs
