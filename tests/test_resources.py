"""Templates and static files: packaged by default, an override folder searched first."""

from __future__ import annotations

from pathlib import Path

import pytest
from jinja2 import TemplateNotFound

from newsletter.feeds import _environment
from newsletter.render_html import Slots, make_environment
from newsletter.resources import packaged_templates, read_resource, template_loader


def test_packaged_templates_without_override() -> None:
    env = make_environment(None)
    assert "<html" in env.get_template("email.html.j2").render(slots=Slots(), site_name="Digest")
    web = make_environment(None, "web")
    assert web.get_template("base.html.j2") is not None
    assert read_resource("email.css", None) == (packaged_templates() / "email.css").read_bytes()
    assert b"{" in read_resource("web/site.css", None)
    listed = template_loader(None, "web").list_templates()
    assert "base.html.j2" in listed and "site.css" in listed


def test_override_wins_file_by_file(tmp_path: Path) -> None:
    (tmp_path / "web").mkdir()
    (tmp_path / "email.txt.j2").write_text("custom text {{ 1 + 1 }}\n", encoding="utf-8")
    (tmp_path / "web" / "site.css").write_text("body { color: red }\n", encoding="utf-8")
    (tmp_path / "web" / "error.html.j2").write_text("custom error\n", encoding="utf-8")

    env = make_environment(tmp_path)
    assert env.get_template("email.txt.j2").render() == "custom text 2\n"
    # Not in the override: from the package.
    packaged_card = (packaged_templates() / "card.html.j2").read_text(encoding="utf-8")
    assert env.loader is not None
    assert env.loader.get_source(env, "card.html.j2")[0] == packaged_card

    web = make_environment(tmp_path, "web")
    assert web.get_template("error.html.j2").render() == "custom error\n"
    assert web.get_template("base.html.j2") is not None  # packaged fallback

    assert read_resource("web/site.css", tmp_path) == b"body { color: red }\n"
    assert read_resource("email.css", tmp_path) == read_resource("email.css", None)


def test_missing_and_escaping_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TemplateNotFound):
        make_environment(None).get_template("no_such_template.j2")
    with pytest.raises(FileNotFoundError):
        read_resource("web/no_such.css", tmp_path)
    with pytest.raises(FileNotFoundError):
        read_resource("../config.py", None)


def test_feed_environments_are_cached_per_override(tmp_path: Path) -> None:
    assert _environment(None) is _environment(None)
    assert _environment(tmp_path) is not _environment(None)
