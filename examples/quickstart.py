"""The main job: quantize the bundled Fashion-MNIST model and print the accuracy table.

    python examples/quickstart.py --help
Same as the installed console command `aimet-tf-quickstart` (aimet_tf/cli/quickstart.py).
"""

from aimet_tf.cli import quickstart

if __name__ == "__main__":
    quickstart.run()
