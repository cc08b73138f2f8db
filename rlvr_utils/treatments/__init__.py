"""Every model compared with the reference: the registry (registry.py) and one file per treatment family, each
registering itself when imported here (a new family is a new file and its import below)."""
from rlvr_utils.treatments import controls, hybrids, identical, matched, nulls, placebos, study, user  # noqa: F401
from rlvr_utils.treatments import planted  # noqa: F401
