"""Caption images: `python caption.py photo.jpg [more.jpg ...] [--attention DIR] [--json]`."""

import sys

from captioner.cli import caption_main

if __name__ == "__main__":
    sys.exit(caption_main())
