"""Hydra search-path plugin that makes ``encoder=eos_fm`` available to PANGAEA.

Hydra imports every module of the ``hydra_plugins`` namespace package at
start-up. This one appends the configs shipped in ``eos_pangaea/configs`` to
the search path, so PANGAEA's own ``pangaea/run.py`` finds
``encoder=eos_fm`` and ``encoder=eos_fm_small`` with no file copied into
PANGAEA. It imports nothing heavy.
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class EoSPangaeaSearchPathPlugin(SearchPathPlugin):
    """Append ``pkg://eos_pangaea.configs`` to Hydra's config search path."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        """Append the package's configs after those of the running application."""
        search_path.append(provider="eos-pangaea", path="pkg://eos_pangaea.configs")
