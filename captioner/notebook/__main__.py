"""The command `python -m captioner.notebook NOTEBOOK [--out EXECUTED]` (`captioner-notebook`): run a
notebook headless (nbclient, with a kernel on this very interpreter) and write the executed copy,
figures included. `execute_notebook` is the same from Python (the test suite runs the notebook so)."""

from __future__ import annotations

import sys
from pathlib import Path


def execute_notebook(path, out=None, timeout: int = 120, cwd=None, threads: int | None = 1):
    """Run every cell of the notebook at `path` headless (nbclient) in a kernel on this interpreter
    (sys.executable, whatever kernels are installed elsewhere); raises nbclient's CellExecutionError on
    the first cell error. Writes the executed notebook to `out` when given; returns it (an nbformat node).
    `cwd` defaults to the notebook's folder. `threads`: CPU threads of the kernel's torch (OMP_NUM_THREADS);
    the demo's tiny decodes gain nothing from more, and on a busy machine extra threads only wait on each
    other (None: torch's default)."""
    import json
    import os
    import tempfile

    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="captioner-kernel-") as tmp:
        spec = Path(tmp) / "kernels" / "captioner-python"
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "captioner (this interpreter)", "language": "python"}))
        saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "MPLBACKEND", "OMP_NUM_THREADS")}
        os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (tmp, saved["JUPYTER_PATH"]) if p)
        os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"  # figures become image/png
        if threads is not None:
            os.environ["OMP_NUM_THREADS"] = str(threads)
        try:
            client = NotebookClient(nb, timeout=timeout, kernel_name="captioner-python",
                                    resources={"metadata": {"path": str(cwd or path.parent)}})
            client.execute()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    nb.metadata.pop("widgets", None)
    if out is not None:
        nbformat.write(nb, str(out))
    return nb


def main(argv=None) -> int:
    import argparse

    from ..cli import _prog, add_version

    parser = argparse.ArgumentParser(prog=_prog("python -m captioner.notebook"),
                                     description="Run a notebook headless and write the executed copy.")
    add_version(parser)
    parser.add_argument("notebook", help="the .ipynb to run (e.g. notebooks/attention_maps.ipynb)")
    parser.add_argument("--out", default=None, help="where to write the executed notebook "
                        "(default: <name>.executed.ipynb next to it)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds allowed per cell")
    args = parser.parse_args(argv)
    source = Path(args.notebook)
    if not source.is_file():
        print(f"error: {source}: no such notebook", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else source.with_suffix(".executed.ipynb")
    from nbclient.exceptions import CellExecutionError

    try:
        execute_notebook(source, out, timeout=args.timeout)
    except CellExecutionError as e:
        print(f"error: a cell failed:\n{e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
