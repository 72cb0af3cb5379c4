"""Import Spoor's code from a given source tree, for A/B runs of two commits side by side.

Since the stages install under the ``spoor`` namespace (``spoor.ingest`` is the folder ``ingest/``),
an editable install maps ``spoor.<stage>`` to the checkout it was installed from: another tree's
``spoor/`` would be paired with this checkout's stages. ``use_tree`` maps them to ``root`` instead;
a tree from before the namespace (``ingest/`` imported as ``ingest``) is put on ``sys.path``.
"""

import importlib.machinery
import sys
from pathlib import Path

STAGES = ("ingest", "stream_processors", "storage", "alerts", "segments", "campaigns", "privacy", "cli")


class _TreeFinder:
    def __init__(self, root: Path):
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        parent, _, stage = fullname.rpartition(".")
        if parent == "spoor" and stage in STAGES and (self.root / stage).is_dir():
            return importlib.machinery.PathFinder.find_spec(fullname, [str(self.root)]) or \
                importlib.util.spec_from_file_location(fullname, self.root / stage / "__init__.py",
                                                       submodule_search_locations=[str(self.root / stage)])
        return None


def use_tree(root: str) -> bool:
    """Import Spoor from ``root``; True when that tree installs its stages under ``spoor``."""
    tree = Path(root).resolve()
    sys.path.insert(0, str(tree))
    namespaced = (tree / "cli" / "__init__.py").is_file()
    if namespaced:
        sys.meta_path.insert(0, _TreeFinder(tree))
    return namespaced
