from dataclasses import replace

from opsledger.lab.image import DEFAULT_MIRROR, ImageRecipe, default_recipe, host_mirrors


def test_recipe_digest_follows_content_not_mirror():
    recipe = default_recipe()
    assert recipe.ref == f"localhost/opsledger-base:{recipe.digest}"
    assert replace(recipe, mirror="http://other/debian").digest == recipe.digest
    assert replace(recipe, setup_script=recipe.setup_script + "\n#").digest != recipe.digest
    assert replace(recipe, packages=(*recipe.packages, "vim")).digest != recipe.digest


def test_recipe_has_what_ansible_and_sshd_need():
    recipe = default_recipe()
    assert {"python3", "openssh-server", "systemd", "sudo"} <= set(recipe.packages)
    # The apt-lists trap (LAB-FACTS): an emptied lists dir must look stale.
    assert "touch -d @0 /var/lib/apt/lists" in recipe.setup_script
    assert ": > /etc/machine-id" in recipe.setup_script


def test_mirrors_from_deb822_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("OPSLEDGER_DEBIAN_MIRROR", raising=False)
    monkeypatch.delenv("OPSLEDGER_DEBIAN_SECURITY_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.test/debian\nSuites: bookworm\n\n"
        "Types: deb\nURIs: http://mirror.test/debian-security/\nSuites: bookworm-security\n"
    )
    assert host_mirrors(tmp_path) == (
        "http://mirror.test/debian",
        "http://mirror.test/debian-security",
    )


def test_mirrors_from_one_line_sources_and_env_override(tmp_path, monkeypatch):
    (tmp_path / "sources.list").write_text("deb [arch=amd64] http://m.test/debian bookworm main\n")
    monkeypatch.delenv("OPSLEDGER_DEBIAN_MIRROR", raising=False)
    assert host_mirrors(tmp_path)[0] == "http://m.test/debian"
    monkeypatch.setenv("OPSLEDGER_DEBIAN_MIRROR", "http://override/debian")
    assert host_mirrors(tmp_path)[0] == "http://override/debian"


def test_mirrors_default_when_nothing_configured(tmp_path, monkeypatch):
    monkeypatch.delenv("OPSLEDGER_DEBIAN_MIRROR", raising=False)
    assert host_mirrors(tmp_path)[0] == DEFAULT_MIRROR
    assert isinstance(default_recipe(), ImageRecipe)
