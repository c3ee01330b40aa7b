"""Train a Show, Attend and Tell captioner: `python train.py --help`."""

import sys

from captioner.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
