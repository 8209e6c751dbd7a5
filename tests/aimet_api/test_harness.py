"""The harness itself: import rewriting touches only import lines; the alias hook is scoped."""

import sys

import pytest

from tests.aimet_api import harness


def test_rewrite_changes_only_import_lines():
    source = (
        "from aimet_tensorflow.keras.quantsim import QuantizationSimModel\n"
        "import aimet_common.defs as defs\n"
        "x = 1  # aimet_tf stays\n"
    )
    out = harness.rewrite_imports(source)
    assert out.splitlines()[0] == "from aimet_tf.keras.quantsim import QuantizationSimModel"
    assert out.splitlines()[1] == "import aimet_tf.common.defs as defs"
    assert harness.changed_lines(source, out) == source.splitlines()[:2]


def test_rewrite_refuses_aimet_names_outside_imports():
    with pytest.raises(ValueError, match="line 2 names an AIMET package outside an import"):
        harness.rewrite_imports("import os\nmodule = 'aimet_common.defs'\n")


def test_alias_hook_resolves_to_aimet_tf_and_is_removed():
    import aimet_tf.common.defs

    with harness.aimet_aliases():
        from aimet_common.defs import QuantScheme  # noqa: F401  (resolved by the hook)
        import aimet_common.defs as aliased

        assert aliased is aimet_tf.common.defs
    assert "aimet_common.defs" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        import aimet_common.defs  # noqa: F401


def test_unchanged_bindings_are_the_rewritten_objects_and_a_wrong_alias_shows():
    source = "from aimet_common.defs import QuantScheme\nimport numpy as np\n\ndef main(workdir):\n    return 1\n"
    bindings = harness.unchanged_bindings(source, harness.rewrite_imports(source), "s.py")
    assert set(bindings) == {"QuantScheme", "np"}
    assert all(a is b for a, b in bindings.values())
    # A rewritten import that binds another object is caught.
    other = harness.rewrite_imports(source).replace("import QuantScheme", "import QuantScheme\nQuantScheme = 0")
    unchanged, ours = harness.unchanged_bindings(source, other, "s.py")["QuantScheme"]
    assert ours == 0 and unchanged is not ours
