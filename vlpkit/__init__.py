"""vlpkit: the reference implementation of E2E-VLP (Xu et al., ACL 2021).

    >>> from vlpkit import build_e2evlp
    >>> model = build_e2evlp("e2evlp-tiny")
"""

from .builder import build_e2evlp
from .config import ConfigError, E2EVLPConfig
from .models import E2EVLP
from .presets import PRESETS, get_preset

__version__ = "0.1.0"
__all__ = ["build_e2evlp", "E2EVLP", "E2EVLPConfig", "ConfigError", "PRESETS", "get_preset", "__version__"]
