"""What extraction stores is chosen by params (extract.dtype, extract.sites, extract.layers); every instrument that
reads the store is checked against them when the params are loaded, naming its own key, and the resource plan
counts the bytes those params store."""
import pytest

from rlvr_utils.core import config
from rlvr_utils.core.params import ParamsError
from rlvr_utils.resources import architecture, plan


def problems(extract: dict, **sections) -> str:
    with pytest.raises(ParamsError) as err:
        config.from_dict({"name": "x", "extract": extract, **sections})
    return str(err.value)


def test_a_site_an_instrument_reads_but_extraction_skips_is_refused_naming_the_instrument_key():
    text = problems({"sites": ["hook_resid_post"]})
    assert "cka.sites (got ['hook_attn_out', 'hook_mlp_out', 'hook_resid_post'])" in text
    assert "probes.sites (got" in text and "never extracted; extract.sites is ['hook_resid_post']" in text
    text = problems({"sites": ["hook_attn_out", "hook_mlp_out"]})
    assert "crosscoder.site (got 'hook_resid_post'): never extracted" in text


def test_a_layer_or_position_an_instrument_reads_but_extraction_skips_is_refused():
    assert "crosscoder.layer (got 3): not among the extracted layers [0, 1]" in problems({"layers": [0, 1]},
                                                                                          crosscoder={"layer": 3})
    assert "crosscoder.layer (got None, the middle block 2): not among the extracted layers [0, 1]" in \
        problems({"layers": [0, 1]})
    text = problems({"positions": ["last_prompt"]})
    assert "cka.position (got 'completion'): never extracted" in text
    assert "crosscoder.position (got 'completion'): never extracted" in text
    assert "probes.targets" in text and "target 'intermediate' reads 'completion'" in text
    assert "extract.layers (got [0, 9])" in problems({"layers": [0, 9]})  # the organism has 4 layers


def test_the_default_stays_float32_every_site_every_layer():
    e = config.from_dict({}).extract
    assert (e.dtype, e.layers, len(e.sites)) == ("float32", None, 4)


def test_the_plan_counts_the_bytes_the_extract_params_store():
    full = config.from_dict({"name": "x"})
    lean = config.from_dict({"name": "x", "extract": {"dtype": "bfloat16", "layers": [1, 2],
                                                      "sites": ["hook_attn_out", "hook_mlp_out", "hook_resid_post"]}})
    arch = architecture.of_run(full)
    bytes_full, rows, layers, element = plan.store_bytes_per_model(full, arch)
    bytes_lean, rows_lean, layers_lean, element_lean = plan.store_bytes_per_model(lean, arch)
    assert (layers, element, layers_lean, element_lean) == (arch.layers, 4, 2, 2) and rows == rows_lean
    assert bytes_lean == pytest.approx(bytes_full * (3 / 4) * (2 / arch.layers) * (2 / 4))
