"""Verdict rules on synthetic summaries: clear patterns decide, straddling intervals do not, gaps are marked."""
import json

import pytest

from rlvr_utils import config, verdict


def entry(value, ci=None):
    return {"value": value, "ci": ci, "description": "synthetic"}


ROUTING_PATTERN = {
    "weights.json": {"rlvr_update_mlp_share": entry(0.2), "rlvr_update_effective_rank_ratio": entry(0.1),
                     "rlvr_top_subspace_angle": entry(2.0)},
    "cka.json": {"cka_sft_rlvr_mlp_out": entry(0.98, [0.97, 0.99]), "cka_sft_rlvr_mlp_minus_attn": entry(0.18, [0.1, 0.25])},
    "probes.json": {"probe_selectivity_gain_rlvr_vs_sft": entry(0.0, [-0.02, 0.02])},
    "patching.json": {"graft_mlp_share": entry(0.1, [0.0, 0.2]), "graft_attn_share": entry(0.9, [0.8, 1.0]),
                      "patch_mlp_out_effect_rlvr_into_sft": entry(0.05, [0.0, 0.1]),
                      "patch_attn_out_effect_rlvr_into_sft": entry(0.6, [0.5, 0.7])},
    "eval.json": {"rlvr_minus_sft_accuracy": entry(0.1, [0.05, 0.15])},
}


def test_a_clear_routing_pattern_supports_routing_in_every_row():
    params = config.VerdictParams()
    table = verdict.evidence_table(ROUTING_PATTERN, params)
    assert len(table) == len(verdict.RULES)
    assert set(table["supports"]) == {verdict.ROUTING}
    assert verdict.overall(verdict.tally(table), params) == verdict.ROUTING


def test_the_mirror_pattern_supports_representation_learning():
    mirrored = {
        "weights.json": {"rlvr_update_mlp_share": entry(0.8), "rlvr_update_effective_rank_ratio": entry(0.9),
                         "rlvr_top_subspace_angle": entry(40.0)},
        "cka.json": {"cka_sft_rlvr_mlp_out": entry(0.5, [0.4, 0.6]), "cka_sft_rlvr_mlp_minus_attn": entry(-0.4, [-0.5, -0.3])},
        "probes.json": {"probe_selectivity_gain_rlvr_vs_sft": entry(0.3, [0.2, 0.4])},
        "patching.json": {"graft_mlp_share": entry(0.9, [0.8, 1.0]), "graft_attn_share": entry(0.1, [0.0, 0.2]),
                          "patch_mlp_out_effect_rlvr_into_sft": entry(0.6, [0.5, 0.7]),
                          "patch_attn_out_effect_rlvr_into_sft": entry(0.05, [0.0, 0.1])},
    }
    table = verdict.evidence_table(mirrored, config.VerdictParams())
    assert set(table["supports"]) == {verdict.REPRESENTATION}


def test_an_interval_straddling_the_threshold_is_inconclusive():
    assert verdict.decide(0.1, [-0.05, 0.3], 0.05, "below") == verdict.INCONCLUSIVE
    assert verdict.decide(0.1, [0.06, 0.3], 0.05, "below") == verdict.REPRESENTATION
    assert verdict.decide(0.1, [0.06, 0.3], 0.05, "above") == verdict.ROUTING
    assert verdict.decide(0.05, None, 0.05, "below") == verdict.INCONCLUSIVE  # exactly on the threshold
    summaries = {"probes.json": {"probe_selectivity_gain_rlvr_vs_sft": entry(0.1, [-0.05, 0.3])}}
    table = verdict.evidence_table(summaries, config.VerdictParams()).set_index("source")
    assert table.loc["probes.json: probe_selectivity_gain_rlvr_vs_sft", "supports"] == verdict.INCONCLUSIVE


def test_a_difference_uses_the_conservative_interval():
    summaries = {"patching.json": {"graft_mlp_share": entry(0.3, [0.2, 0.4]), "graft_attn_share": entry(0.5, [0.3, 0.7])}}
    rule = next(r for r in verdict.RULES if r.minus == "graft_attn_share")
    value, ci = verdict.observe(summaries, rule)
    assert value == pytest.approx(-0.2)
    assert ci == pytest.approx([0.2 - 0.7, 0.4 - 0.3])  # contains 0: inconclusive
    assert verdict.decide(value, ci, 0.0, rule.routing_side) == verdict.INCONCLUSIVE
    summaries["patching.json"]["graft_attn_share"] = entry(0.9)  # no interval: counts as the point [0.9, 0.9]
    assert verdict.observe(summaries, rule)[1] == pytest.approx([0.2 - 0.9, 0.4 - 0.9])


def test_missing_files_keys_and_values_are_not_measured_rather_than_errors():
    summaries = {"cka.json": {"cka_sft_rlvr_mlp_out": {"value": None}, "cka_sft_rlvr_mlp_minus_attn": "0.3"},  # no number
                 "patching.json": {"graft_mlp_share": entry(0.1)}}  # its partner key is missing
    params = config.VerdictParams()
    table = verdict.evidence_table(summaries, params)
    assert set(table["supports"]) == {verdict.NOT_MEASURED}
    assert set(table["observed"]) == {"—"}
    counts = verdict.tally(table)
    assert counts[verdict.NOT_MEASURED] == len(verdict.RULES)
    assert verdict.overall(counts, params) == verdict.INCONCLUSIVE


def test_the_tally_needs_enough_rows_and_a_margin():
    params = config.VerdictParams(min_decided_rows=3, min_margin=2)
    counts = lambda r, p: {verdict.ROUTING: r, verdict.REPRESENTATION: p, verdict.INCONCLUSIVE: 0, verdict.NOT_MEASURED: 0}
    assert verdict.overall(counts(2, 0), params) == verdict.INCONCLUSIVE
    assert verdict.overall(counts(3, 2), params) == "mixed"
    assert verdict.overall(counts(4, 2), params) == verdict.ROUTING
    assert verdict.overall(counts(1, 5), params) == verdict.REPRESENTATION


def test_thresholds_come_from_params():
    strict = config.VerdictParams(mlp_share_threshold=0.1)
    table = verdict.evidence_table(ROUTING_PATTERN, strict).set_index("source")
    assert table.loc["weights.json: rlvr_update_mlp_share", "supports"] == verdict.REPRESENTATION
    rules = verdict.thresholds_table(strict).set_index("param")
    assert rules.loc["verdict.mlp_share_threshold", "value"] == 0.1
    assert all(rules["rule"].str.len() > 0)


def test_build_reads_the_run_writes_caveats_and_survives_broken_files(tmp_path):
    cfg = config.from_dict({"name": "t", "runs_dir": str(tmp_path)})
    metrics = cfg.path("metrics")
    metrics.mkdir(parents=True)
    for file, summary in ROUTING_PATTERN.items():
        if file != "probes.json":
            (metrics / file).write_text(json.dumps({"summary": summary}))
    (metrics / "probes.json").write_text("{not json")
    result = verdict.build(cfg)
    json.dumps(result, allow_nan=False)  # strict JSON
    assert result["tally"][verdict.NOT_MEASURED] == 1
    assert result["tally"][verdict.ROUTING] == len(verdict.RULES) - 1
    assert result["verdict"] == verdict.ROUTING
    assert result["summary"]["rows_routing"]["value"] == len(verdict.RULES) - 1
    text = " ".join(result["caveats"])
    assert "seed 0" in text and "organism" in text and "word problems" in text and "Not measured (1 of" in text
    table = verdict.evidence_table(verdict.load_summaries(metrics), cfg.verdict)
    assert verdict.markdown_table(table).count("\n") == len(verdict.RULES) + 1
    assert "Supports" in verdict.styled(table).to_html()
