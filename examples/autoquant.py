"""AutoQuant: a float model in, the best quantized model out, with an HTML report.

    python examples/autoquant.py --help
Same as the installed console command `aimet-tf-autoquant` (aimet_tf/cli/autoquant.py).
"""

from aimet_tf.cli import autoquant

if __name__ == "__main__":
    autoquant.run()
