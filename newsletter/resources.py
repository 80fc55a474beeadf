"""Templates and static files: shipped inside the package, optionally overridden by a folder.

The email, feed and web templates and their stylesheets are package data under
``newsletter/templates`` and are read through :mod:`importlib.resources`, so an installed
wheel works from any working directory. The setting ``templates_dir`` names an optional
override folder laid out like the packaged one (``email.html.j2``, ``email.css``,
``web/base.html.j2``, ``web/site.css``...): a file found there wins, every other file comes
from the package. An override therefore only needs the files it changes.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from jinja2 import BaseLoader, ChoiceLoader, Environment, FileSystemLoader, TemplateNotFound
from jinja2.loaders import split_template_path

__all__ = ["packaged_templates", "read_resource", "template_loader"]

PACKAGE = "newsletter"
TEMPLATES = "templates"


def packaged_templates() -> Traversable:
    """The packaged templates folder (a directory on disk, or inside a zip)."""
    return files(PACKAGE).joinpath(TEMPLATES)


def _join(root: Traversable, relative: str) -> Traversable:
    node = root
    for piece in split_template_path(relative):  # refuses "..": no escape from the root
        node = node.joinpath(piece)
    return node


class _PackageLoader(BaseLoader):
    """Jinja2 loader over a folder of package data, read with importlib.resources."""

    def __init__(self, subdir: str = "") -> None:
        self._subdir = subdir

    def _root(self) -> Traversable:
        return _join(packaged_templates(), self._subdir) if self._subdir else packaged_templates()

    def get_source(
        self, environment: Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        node = _join(self._root(), template)
        if not node.is_file():
            raise TemplateNotFound(template)
        filename = str(node) if isinstance(node, Path) else None
        # Package data does not change while the process runs: always up to date.
        return node.read_text(encoding="utf-8"), filename, lambda: True

    def list_templates(self) -> list[str]:
        found: list[str] = []

        def walk(node: Traversable, prefix: str) -> None:
            for child in node.iterdir():
                if child.is_dir():
                    walk(child, f"{prefix}{child.name}/")
                elif child.is_file():
                    found.append(prefix + child.name)

        walk(self._root(), "")
        return sorted(found)


def template_loader(override: Path | None, subdir: str = "") -> BaseLoader:
    """A loader for the templates under ``subdir`` ("" or "web"): ``override/subdir`` first
    when an override folder is set, then the packaged templates."""
    packaged = _PackageLoader(subdir)
    if override is None:
        return packaged
    folder = override / subdir if subdir else override
    return ChoiceLoader([FileSystemLoader(str(folder)), packaged])


def read_resource(relative: str, override: Path | None) -> bytes:
    """A static file such as ``email.css`` or ``web/site.css``: from the override folder
    when it has the file, else from the package."""
    try:
        pieces = split_template_path(relative)
    except TemplateNotFound:  # "..": outside the templates
        raise FileNotFoundError(f"{relative!r} is not a path inside the templates") from None
    if override is not None:
        candidate = override.joinpath(*pieces)
        if candidate.is_file():
            return candidate.read_bytes()
    node = packaged_templates().joinpath(*pieces)
    if not node.is_file():
        raise FileNotFoundError(f"{relative} is not among the packaged templates")
    return node.read_bytes()
