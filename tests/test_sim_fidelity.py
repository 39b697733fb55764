"""The built-in profiles against published measurements (llmlb_fast.sim.fidelity)."""

from __future__ import annotations

from pathlib import Path

import pytest
from llmlb_fast.sim.fidelity import ANCHORS, TOLERANCE, Anchor, compare, render
from llmlb_fast.sim.profiles import PROFILES

DOC = Path(__file__).parent.parent / "docs" / "benchmark.md"
BEGIN, END = "<!-- fidelity:begin -->", "<!-- fidelity:end -->"


@pytest.mark.parametrize(
    "anchor",
    [a for a in ANCHORS if a.checked],
    ids=lambda a: f"{a.profile}: {a.scenario.describe()}",
)
def test_model_is_within_tolerance_of_each_checked_anchor(anchor: Anchor) -> None:
    (comparison,) = compare([anchor])
    assert abs(comparison.gap) <= TOLERANCE, (
        f"{anchor.profile}: model {comparison.model:.2f} vs published {anchor.published} "
        f"{anchor.scenario.unit} ({comparison.gap:+.1%}; {anchor.source})"
    )


def test_every_anchor_names_a_profile_a_source_and_why_when_unchecked() -> None:
    for anchor in ANCHORS:
        assert anchor.profile in PROFILES
        assert anchor.url.startswith("https://") and anchor.source
        assert anchor.checked or anchor.note, "an unchecked anchor says why"
    assert {a.profile for a in ANCHORS if a.checked} == set(PROFILES)


def test_docs_table_is_what_the_command_prints() -> None:
    text = DOC.read_text()
    doc_tables = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert doc_tables == render().strip(), (
        "docs/benchmark.md is out of date: paste `python -m llmlb_fast.sim.fidelity`"
    )
