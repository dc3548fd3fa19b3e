"""`fractalgen train` in a subprocess (plain or under torchrun), with switches for the tests.

FRACTALGEN_TEST_FLOAT64=1: the model (hence gradients and optimizer state) in float64, so that
    summing in another order changes the weights far below what a wrong update would.
FRACTALGEN_TEST_STEP_DELAY=S: sleep S seconds per step, so that a signal lands mid-run.
"""
import os
import sys
import time

from fractalgen import train
from fractalgen.cli import main
from fractalgen.model import FractalModel

if os.environ.get("FRACTALGEN_TEST_FLOAT64") == "1":
    train.FractalModel = lambda config: FractalModel(config).double()

delay = float(os.environ.get("FRACTALGEN_TEST_STEP_DELAY", "0"))
if delay:
    forward = train.LossModule.forward

    def slow_forward(self, *args):
        time.sleep(delay)
        return forward(self, *args)

    train.LossModule.forward = slow_forward

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
