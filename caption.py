"""Caption images: `python caption.py photo.jpg [more.jpg ...] [--attention DIR] [--json]`."""

import sys

from captioner.cli import caption_main
from captioner.runtime import configure_cpu_process

if __name__ == "__main__":
    configure_cpu_process()  # before torch loads (neither import above loads it): see captioner/runtime.py
    sys.exit(caption_main())
