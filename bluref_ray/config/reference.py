"""The configuration reference (``docs/configuration.md``), written from the settings themselves.

    python -m bluref_ray.config.reference > docs/configuration.md

Each section's table lists every setting with its default, its concern (for sections whose
settings are hashed) and its help text, the same text ``bluref <command> --help`` shows; a test
keeps the page equal to what this module writes.
"""

from __future__ import annotations

import dataclasses
import typing

from bluref_ray.config import Config
from bluref_ray.config.core import ordered_fields

INTRO = """# bluref-ray: configuration reference

Written by `python -m bluref_ray.config.reference` from the settings' own help texts (a test
keeps it current). Every setting can be given in a YAML file (`--config FILE`, sections as
below), as `--set SECTION.KEY=VALUE`, or as the command's own option (`bluref <command>
--help`); later ones win. In sections with a *concern* column, the settings of concern
`method` and `matcher` make the settings hash that tells runs apart (a resumed run must agree
on them); `execution` settings may change between a run and its resumption.
"""


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    return "none" if value is None else f"`{value}`"


def reference_markdown() -> str:
    """The whole reference page, one table per section of :class:`Config`."""
    lines = [INTRO]
    hints = typing.get_type_hints(Config)
    for section in dataclasses.fields(Config):
        cls = hints[section.name]
        fields = ordered_fields(cls)
        concerns = any("concern" in f.metadata for f in fields)
        doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        lines += [f"## `{section.name}`", "", doc, ""]
        head = "| setting | default |" + (" concern |" if concerns else "") + " meaning |"
        lines += [head, "|---|---|" + ("---|" if concerns else "") + "---|"]
        for f in fields:
            text = f.metadata.get("help", "").replace("|", "\\|")
            concern = f" {f.metadata.get('concern', '')} |" if concerns else ""
            lines.append(f"| `{section.name}.{f.name}` | {_default(f)} |{concern} {text} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_markdown(), end="")
