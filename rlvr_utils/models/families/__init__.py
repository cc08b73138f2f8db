"""Model families: one file per supported architecture (llama.py, olmo2.py, gpt2.py, gpt_neox.py) registers its
layout with `base.register`; `base` says what a layout is and holds the views every instrument uses. Adding a
family is one file here and its import below."""
from rlvr_utils.models.families import gpt2, gpt_neox, llama, olmo2  # noqa: F401 (each registers its layout)
from rlvr_utils.models.families.base import (COMPONENTS, LAYER_COMPONENTS, SITES, Block, Family,  # noqa: F401
                                             blocks, component_map, family_of, final_norm, register, site_name,
                                             supported, unembedding)
