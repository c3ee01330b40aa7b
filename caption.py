"""Caption images: `python caption.py photo.jpg [more.jpg ...] [--attention DIR] [--json]`."""

from captioner.cli import caption_main
from captioner.runtime import configure_cpu_process, exit_now

if __name__ == "__main__":
    configure_cpu_process()  # before torch loads (neither import above loads it): see captioner/runtime.py
    exit_now(caption_main())  # output flushed, files closed: skip tearing torch down (about 0.5 s)
