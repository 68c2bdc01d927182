"""How a long-lived process (a web worker) holds what it loaded at start."""

import gc
from importlib import import_module

from django.conf import settings


def freeze_startup_objects() -> None:
    """Load the URL patterns (else the first request does), collect once, then freeze every
    object alive so far out of the cyclic garbage collector's generations.

    Everything loaded at start (Django, the apps, the admin registry, the URL patterns:
    ~150,000 tracked objects) lives as long as the process, yet each full collection walked
    it: 100-160 ms inside whichever request triggered it (bench/README.md, "The slow
    sample"). Frozen objects are never walked nor freed; new objects are collected as
    before. Under a preloading server it also keeps forked workers from touching (and so
    copying) the shared pages."""
    import_module(settings.ROOT_URLCONF)
    gc.collect()
    gc.freeze()
