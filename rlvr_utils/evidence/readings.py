"""Chapter summaries in the verdict's words. Each chapter that feeds the evidence table closes with what its rows
read on RLVR, on the controls and on the references (placebos, random-direction nulls, the identical copy), and
whether each row counts: the same rules as the verdict (rlvr_utils.evidence.verdict), read from the same metrics,
so that no chapter reads a hypothesis where the verdict reads "no evidence", or from a row the verdict does not
count."""
from __future__ import annotations

from typing import Mapping

import pandas as pd

from rlvr_utils.core import fmt
from rlvr_utils.evidence import verdict
from rlvr_utils.treatments import registry

PARAMS = ("verdict",)  # params sections read here (rlvr_utils.core.deps)

# how the prose names each kind of treatment (subject and verb); the identical kind is "The identical copy reads"
KIND_NAMES = {"control": "The controls read", "placebo": "The placebos read",
              "null": "The random-direction nulls read", "user": "Other treatments read"}
ORDER = ("control", *registry.REFERENCE_KINDS, "user")  # the order a reader checks them in


def _signal(s: Mapping) -> str:
    """'attn_change 0.0012 [0.0010, 0.0014] (references 0.0003 to 0.0006)': a signal against its references."""
    if s.get("value") is None:
        return f"`{s['key']}` not measured"
    text = f"`{s['key']}` {fmt.interval(s['value'], s.get('ci'))}"
    env = s.get("null_envelope")
    if env:
        text += f" (references' intervals span {fmt.interval(env[0])} to {fmt.interval(env[1])})"
    return text


def _by_reading(names: list[str], readings: Mapping[str, str]) -> str:
    """'Routing on attn_only and routing_hybrid; no evidence on mlp_only': treatments grouped by reading."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(readings.get(name, verdict.NOT_MEASURED), []).append(f"`{name}`")
    return "; ".join(f"{reading} on {', '.join(members)}" for reading, members in groups.items())


def problems(calibration: str) -> list[str]:
    """A row's calibration as its list of problems (empty when it counts)."""
    return [] if calibration == "counts" else calibration.split("; ")


def row_summary(row: Mapping, kinds: Mapping[str, str], scope: Mapping[str, tuple[str, ...]] | None = None,
                said: tuple[str, ...] = ()) -> str:
    """One evidence row (a record of verdict.evidence) as a paragraph: RLVR's reading with its values against the
    references, the readings of the controls and of the references by kind, and whether the row counts (and why
    not). A reading of RLVR on a row that does not count is said to be no evidence for either hypothesis.
    `kinds`: treatment -> kind (registry.kinds); `scope`: control -> the row groups it calibrates (Design.scope),
    so that a planted feature is not listed under rows it does not calibrate; `said`: calibration problems the
    reader has already been told (shared by every row of a chapter), left out here."""
    scope = scope or {}
    readings = {t: r for t, r in row["readings"].items() if row["group"] in scope.get(t, (row["group"],))}
    rlvr = readings.get(registry.STUDY, verdict.NOT_MEASURED)
    keys = {s["key"]: s for s in row.get("signals") or []}  # a two-sided row reads one key twice: show it once
    signals = "; ".join(_signal(s) for s in keys.values())
    parts = [f"**{row['measurement']}.** RLVR reads **{rlvr}**" + (f": {signals}." if signals else ".")]
    for kind in ORDER:
        names = [t for t, k in kinds.items() if k == kind and t in readings]
        if names:
            parts.append(f"{KIND_NAMES.get(kind, f'The {kind} copy reads')} {_by_reading(names, readings)}.")
    if row["calibration"] == "counts":
        parts.append("The row **counts** toward the verdict.")
    else:
        own = [p for p in problems(row["calibration"]) if p not in said]
        parts.append("The row **does not count** toward the verdict" + (f" ({'; '.join(own)})" if own else "")
                     + (", so RLVR's reading here is no evidence for either hypothesis."
                        if rlvr in verdict.DECIDED else "."))
    if row.get("note"):
        parts.append(f"Note: {row['note']}.")
    return " ".join(parts)


def chapter_table(cfg, *files: str) -> pd.DataFrame:
    """The evidence rows read from `files` (metrics file names, e.g. "cka.json"), computed from the run's
    metrics as the verdict computes them (this seed only: replicate seeds enter in the verdict chapter)."""
    unknown = set(files) - {rule.file for rule in verdict.RULES}
    if unknown:
        raise ValueError(f"no evidence row reads {sorted(unknown)}; rows read "
                         f"{sorted({rule.file for rule in verdict.RULES})}")
    metrics = verdict.load_metrics(cfg.path("metrics"))
    table = verdict.evidence(metrics, verdict.Design.from_registry(cfg), cfg.verdict)
    return table[table["file"].isin(files)].reset_index(drop=True)


def chapter_summary(cfg, *files: str) -> str:
    """Markdown for a chapter's close: what the verdict's rules read from this chapter's metrics files, row by
    row (row_summary)."""
    table = chapter_table(cfg, *files)
    design = verdict.Design.from_registry(cfg)
    # problems of the run rather than of a row (no placebos, no full-parameter control) are said once
    lists = [problems(c) for c in table["calibration"]]
    shared = tuple(p for p in lists[0] if all(p in other for other in lists[1:])) if len(lists) > 1 else ()
    head = ("**What the verdict reads from this chapter** (the verdict chapter's rules on this run's metrics; a row "
            "reads a hypothesis for a treatment only when its whole interval lies beyond every reference's, by "
            "the row's effect size, and counts only when it reads every control right and every reference as "
            "no evidence):")
    if shared:
        head += f"\n\nNo row of this chapter counts on this run, for reasons they share: {'; '.join(shared)}."
    rows = [f"- {row_summary(row, design.kinds, design.scope, shared)}" for row in table.to_dict("records")]
    return "\n\n".join([head, *rows])
