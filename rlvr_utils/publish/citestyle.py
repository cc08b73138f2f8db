"""The book's citation style: author-year in round brackets, "(Shao et al., 2024)" and "Shao et al. (2024)",
as papers of the field write them (sphinxcontrib-bibtex's own author_year style uses square brackets).

sphinxcontrib-bibtex's documented way to change the brackets is a referencing style registered as a plugin
(its docs: "Custom Inline Citation References"). Jupyter Book loads this module as a Sphinx extension
(_config.yml, sphinx.config.extensions), which registers the style before sphinxcontrib.bibtex looks up
`bibtex_reference_style` (at builder-inited)."""
from __future__ import annotations

import dataclasses

from sphinxcontrib.bibtex.plugin import register_plugin
from sphinxcontrib.bibtex.style.referencing import BracketStyle
from sphinxcontrib.bibtex.style.referencing.author_year import AuthorYearReferenceStyle

NAME = "author_year_round"  # the value of bibtex_reference_style in _config.yml


def _round() -> BracketStyle:
    # several works in one citation: "(Kornblith et al., 2019; Raghu et al., 2017)"
    return BracketStyle(left="(", right=")", sep="; ")


def _round_textual() -> BracketStyle:
    # the year alone is bracketed; several works read as a list: "A (2019), B (2020) and C (2021)"
    return BracketStyle(left="(", right=")", sep=", ", sep2=" and ", last_sep=" and ")


@dataclasses.dataclass
class RoundAuthorYearReferenceStyle(AuthorYearReferenceStyle):
    """sphinxcontrib-bibtex's author_year style (every role it has: p, t, alp, author, year, ...) with round
    brackets."""

    bracket_parenthetical: BracketStyle = dataclasses.field(default_factory=_round)
    bracket_textual: BracketStyle = dataclasses.field(default_factory=_round_textual)
    bracket_author: BracketStyle = dataclasses.field(default_factory=_round)
    bracket_label: BracketStyle = dataclasses.field(default_factory=_round)
    bracket_year: BracketStyle = dataclasses.field(default_factory=_round)


register_plugin("sphinxcontrib.bibtex.style.referencing", NAME, RoundAuthorYearReferenceStyle, force=True)


def setup(app) -> dict:
    """Sphinx extension entry point: importing the module registered the style; nothing else to set up."""
    return {"parallel_read_safe": True, "parallel_write_safe": True}
