"""deconv: see what a CNN's units respond to, with the deconvnet of Zeiler & Fergus (2013).

>>> mirror = deconv.build_mirror(model)
>>> rec = mirror.project(images, layer="features.29", channel=12)   # (N, C, H, W)
"""

from . import errors
from .builders import Call, Rule, register_mirror, registered_types, resolve_rule, rules, unregister_mirror
from .census import Census, Unit, census
from .errors import *  # noqa: F403  (the typed errors, listed in errors.__all__)
from .mirror import DEFAULT_MEMORY_BUDGET, Box, LayerInfo, Mirror, ReceptiveField, Selection, build_mirror
from .zoo.models import default_dataset, default_model

__version__ = "0.1.0"

__all__ = [
    "build_mirror",
    "census",
    "Census",
    "Unit",
    "Mirror",
    "Selection",
    "Box",
    "LayerInfo",
    "ReceptiveField",
    "DEFAULT_MEMORY_BUDGET",
    "default_model",
    "default_dataset",
    "register_mirror",
    "rules",
    "Rule",
    "resolve_rule",
    "Call",
    "unregister_mirror",
    "registered_types",
    "__version__",
    *errors.__all__,
]
