"""tailor: turn a short per-app recipe into a tailor-made Linux microVM.

Each stage of the pipeline is one module with plain functions (usable without
doit) and one task generator that dodo.py wires:

recipe (:mod:`tailor.recipe`) -> resolved, verified .config (:mod:`tailor.kconfig`)
-> kernel (:mod:`tailor.kernel`) -> rootfs image (:mod:`tailor.rootfs`)
-> boot test (:mod:`tailor.boot`).
"""

__version__ = "0.1.0"
