"""ghostmaps.analysis: measure how redundant a CNN's feature maps are.

Data flow: ``models`` (load a network) -> ``images`` (load photos) -> ``capture`` (forward hooks)
-> ``stats`` (streaming per-layer moments) -> ``similarity`` (C x C matrices) -> ``pairs`` (ghost pairs)
-> ``plots`` / ``cli``.
"""

__version__ = "0.1.0"
