"""The web server's model thread: one batch at a time, the photos waiting for the same model and beam
size captioned together (`inference.caption_batch`), so eight clients waiting cost one batched beam
search, not eight models' worth of activations side by side."""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from dataclasses import dataclass

from .models import LoadedModel

MAX_BATCH = 8                  # photos decoded together by the model thread


@dataclass
class _Job:
    model: LoadedModel
    beam_size: int
    pixels: object                     # uint8 (3, S, S)
    future: concurrent.futures.Future


class Batcher:
    """Runs `caption_batch` on one thread; `submit` returns a Future of (the photo's Caption, seconds
    the batch took, photos in the batch)."""

    def __init__(self, max_batch: int = MAX_BATCH):
        self.max_batch = max_batch
        self.batches = 0               # batches run, and the photos in them (for tests and benchmarks)
        self.photos = 0
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, model: LoadedModel, beam_size: int, pixels) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:  # the thread starts with the first photo (again after close)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="captioner-model", daemon=True)
                self._thread.start()
            self._queue.put(_Job(model, beam_size, pixels, future))
        return future

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._queue.put(None)
        if thread is not None:
            thread.join(timeout=30)

    def _run(self) -> None:
        held: list[_Job] = []          # taken from the queue but not in the last batch (another model or beam)
        while True:
            if not held:
                job = self._queue.get()
                if job is None:
                    return
                held.append(job)
            stop = False
            while True:                # everything that is waiting now
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                held.append(job)
            first = held[0]
            batch = [j for j in held if j.model is first.model and j.beam_size == first.beam_size][:self.max_batch]
            taken = {id(j) for j in batch}
            held = [j for j in held if id(j) not in taken]
            self._caption(batch)
            if stop:
                for job in held:
                    job.future.cancel()
                return

    def _caption(self, batch: list[_Job]) -> None:
        import torch

        from ..inference import caption_batch

        batch = [j for j in batch if j.future.set_running_or_notify_cancel()]
        if not batch:
            return
        loaded = batch[0].model
        start = time.perf_counter()
        try:
            captions = caption_batch(loaded.model, torch.stack([j.pixels for j in batch]), loaded.vocab,
                                     batch[0].beam_size)
        except Exception as e:  # noqa: BLE001 - handed to the waiting requests, never kills the thread
            for job in batch:
                job.future.set_exception(e)
            return
        self.batches += 1
        self.photos += len(batch)
        took = time.perf_counter() - start
        for job, caption in zip(batch, captions):
            job.future.set_result((caption, took, len(batch)))
