"""The README's layer table is what the simulation and the TFLite export do today, measured."""

import difflib
import pathlib
import re

import pytest

from aimet_tf.quantization.registry import registered_classes
from aimet_tf.testing import layer_support

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
_TABLE = re.compile(r"<!-- layer-support -->\n(.*?)\n<!-- /layer-support -->", re.S)


def _family(cls: type) -> str:
    """Conv1D, Conv2D and Conv3D (and the other 1D/2D/3D kinds) share one row."""
    return re.sub(r"[123]D", "nD", cls.__name__)


def test_every_registered_layer_class_has_a_row():
    covered = set().union(*(layer_support.covered_classes(case) for case in layer_support.CASES))
    families = {_family(cls) for cls in covered}
    # Classes that other test modules register for themselves (collected before this runs) have no row.
    shipped = [cls for cls in registered_classes() if cls.__module__.startswith(("keras.", "aimet_tf."))]
    assert len(shipped) > 60
    missing = [cls.__name__ for cls in shipped if cls not in covered and _family(cls) not in families]
    assert missing == []


@pytest.mark.slow
def test_readme_table_is_the_measured_one():
    match = _TABLE.search(README.read_text())
    assert match, "README.md has no <!-- layer-support --> table"
    rows = [layer_support.support_row(case) for case in layer_support.CASES]
    stale = list(difflib.unified_diff(match.group(1).splitlines(), layer_support.markdown_table(rows).splitlines(),
                                      "README.md", "measured", lineterm="", n=0))
    assert not stale, ("README's layer table is stale: regenerate it with python -m aimet_tf.testing.layer_support\n"
                       + "\n".join(stale))
