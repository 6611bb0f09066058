"""The wheel's build hook: compiles the gettext catalogs (.po, in git) into the .mo files the
service reads, so every wheel (and the image built from one) speaks every language. The .mo
files are build output (.gitignore); `make install` compiles the same ones for the source tree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from hatchling.builders.hooks.plugin.interface import BuildHookInterface

CATALOGS = "camvoice/translations"


def compile_catalog(po: Path) -> Path:
    """po -> mo beside it, fuzzy entries left out (as `pybabel compile` does)."""
    with po.open("rb") as source:
        catalog = read_po(source, locale=po.parent.parent.name)
    mo = po.with_suffix(".mo")
    with mo.open("wb") as target:
        write_mo(target, catalog)
    return mo


class CatalogsHook(BuildHookInterface):  # type: ignore[type-arg]
    """Compile, then ship the .mo files git ignores."""

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        if version == "editable":  # the tree itself is on the path: `make install` compiled it
            return
        for po in sorted((root / CATALOGS).glob("*/LC_MESSAGES/*.po")):
            mo = compile_catalog(po)
            build_data["force_include"][str(mo)] = mo.relative_to(root).as_posix()
