"""Triton kernels of seedfast, one module per op (installed as ``seedfast.kernels``).

The public entry points are the ops in :mod:`seedfast.ops`; nothing is imported here.

Why the block below: this folder sits at the repository root, so whenever the root is on
``sys.path`` (``python -m pytest``, ``python -c`` or ``torchrun`` started there), ``import
kernels`` finds this file before Hugging Face's ``kernels`` package in site-packages, and
transformers (which requires that package and does ``from kernels import CUDAProperties``)
breaks. So when this file runs under the top-level name ``kernels`` it looks for another
``kernels`` on ``sys.path`` (skipping the root that holds this folder), executes it and puts it
in ``sys.modules["kernels"]``: the import statement then returns Hugging Face's module, whatever
the working directory. The import system returns ``sys.modules[name]`` after executing a
module, which is what makes the hand-over work. Without that package installed, this stays an
empty module without ``__version__``, which transformers' version probe reads as unavailable.
Under its real name, ``seedfast.kernels``, none of this runs.
"""

if __name__ == "kernels":

    def _hand_over_to_installed_kernels() -> None:
        import importlib.machinery
        import importlib.util
        import os
        import sys

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        search_path = [entry for entry in sys.path
                       if os.path.abspath(entry or os.curdir) != root]
        spec = importlib.machinery.PathFinder.find_spec("kernels", search_path)
        if spec is None or spec.loader is None:
            return
        module = importlib.util.module_from_spec(spec)
        sys.modules["kernels"] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules["kernels"]
            raise

    _hand_over_to_installed_kernels()
    del _hand_over_to_installed_kernels
