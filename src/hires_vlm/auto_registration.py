"""Registering with transformers' Auto classes without making ``import hires_vlm`` import them.

``import hires_vlm`` stays cheap — ``hires-vlm --help`` and ``hires_vlm.eval`` import neither torch
nor transformers — yet afterwards ``AutoConfig.from_pretrained(dir)``, ``AutoModel``,
``AutoProcessor``, ``pipeline(...)`` know ``model_type = "hires_vlm"``. So the package registers:

* at once, when transformers' Auto classes are already loaded;
* otherwise right after they are: an import hook watches the modules of transformers and of this
  package finish loading, and as soon as ``transformers.models.auto.configuration_auto`` is loaded
  and no module of either package is half-initialised (registering then cannot meet a circular
  import), it imports ``hires_vlm.model``, whose import registers the classes
  (:func:`hires_vlm.model.auto.register_auto_classes`), and takes itself off ``sys.meta_path``.

The hook wraps a module's loader only while that module executes: a loaded module keeps its own
``__loader__``. If registering fails, the error is a warning; ``import hires_vlm.model`` shows it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import threading
import warnings

AUTO_MODULE = "transformers.models.auto.configuration_auto"
_PACKAGES = ("transformers", "hires_vlm")
_lock = threading.RLock()
_state = {"registered": False, "hook": None}


def _watched(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in _PACKAGES)


def _half_initialised(done: str | None) -> bool:
    """A module of transformers or of this package is still executing (``done``, just executed, aside; and the
    ``hires_vlm`` package itself, whose ``__init__`` calls :func:`register_with_transformers`)."""
    for name, module in list(sys.modules.items()):
        if name in (done, "hires_vlm") or not _watched(name):
            continue
        if getattr(getattr(module, "__spec__", None), "_initializing", False):
            return True
    return False


def _ready(done: str | None = None) -> bool:
    return AUTO_MODULE in sys.modules and not _half_initialised(done)


def mark_registered() -> None:
    """Called by ``register_auto_classes``: the classes are registered, the hook is no longer needed."""
    with _lock:
        _state["registered"] = True
        hook = _state["hook"]
        _state["hook"] = None
        if hook is not None and hook in sys.meta_path:
            sys.meta_path.remove(hook)


def _register() -> None:
    with _lock:
        if _state["registered"]:
            return
        mark_registered()  # before importing, so that the imports below do not come back here
    try:
        importlib.import_module("hires_vlm.model")  # its import registers the classes
    except Exception as err:  # noqa: BLE001  (a broken install must not break the user's import of transformers)
        warnings.warn(f"hires-vlm could not register with transformers' Auto classes ({err!r}); "
                      "`import hires_vlm.model` shows the error", stacklevel=2)


class _Loader(importlib.abc.Loader):
    """A module's own loader, and a call to :func:`_loaded` once the module has executed."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        if _ready(module.__name__):
            _register()

    def __getattr__(self, name):
        return getattr(self.loader, name)


class _Hook(importlib.abc.MetaPathFinder):
    """Finds what the other finders find, for the watched packages, with the loader wrapped."""

    def find_spec(self, name, path=None, target=None):
        if not _watched(name) or _state["registered"]:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


def register_with_transformers() -> None:
    """Register now if transformers' Auto classes are loaded, otherwise as soon as they are."""
    with _lock:
        if _state["registered"]:
            return
        if not _ready():
            if _state["hook"] is None:
                _state["hook"] = _Hook()
                sys.meta_path.insert(0, _state["hook"])
            return
    _register()
