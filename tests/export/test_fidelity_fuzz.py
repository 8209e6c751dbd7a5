"""Fidelity fuzzer: random models from the supported layer set, calibrated on one input
distribution and scored on a different, wider one plus rounding ties at the input grid; the
simulation must equal the exported .tflite on every output element, for LiteRT's default
(XNNPACK) and reference kernels, with int8 and int4 weights.

60 models in all (30 at W8, 30 at W4), packed ten to a .tflite file (disjoint subgraphs, one
input and one output each), so that the suite stays within its time budget on 2 cores. A failure
prints the seed, the model and the first differing tensor; ``random_model(seed)`` rebuilds the
model. `benchmarks/bench_fidelity.py` runs many more seeds (``python -m benchmarks.run
--only=fidelity``).
"""

import pytest

from aimet_tf.testing.fuzz import check_fidelity

PACK = 10


@pytest.mark.slow
@pytest.mark.parametrize("pack", range(3))
@pytest.mark.parametrize("param_bw, first_seed", [(8, 0), (4, 10_000)])
def test_random_models_simulation_equals_tflite(param_bw, first_seed, pack):
    seeds = range(first_seed + PACK * pack, first_seed + PACK * (pack + 1))
    failures = check_fidelity(seeds, param_bw, kernels=("default", "reference"))
    assert not failures, f"{len(failures)} of {PACK} models differ:\n\n" + "\n\n".join(map(str, failures))
