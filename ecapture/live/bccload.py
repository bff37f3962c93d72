"""Import Debian's bcc from our own Python.

bcc is pure Python over libbcc.so, but Debian installs it for the system interpreter only
(/usr/lib/python3/dist-packages). A virtualenv or another CPython cannot see it, so we load
just the ``bcc`` package from there, without putting all of dist-packages on sys.path.
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import os
import sys
from types import ModuleType

from ecapture.errors import PrerequisiteError

# Debian/Ubuntu, then Fedora/RHEL (a versioned directory), then local installs.
SEARCH = ("/usr/lib/python3/dist-packages", "/usr/lib/python3/site-packages",
          "/usr/lib/python3.*/site-packages", "/usr/lib64/python3.*/site-packages",
          "/usr/local/lib/python3/dist-packages")
INSTALL_HINT = ("install it with: apt-get install python3-bpfcc libbpfcc bpfcc-tools "
                "(Fedora: dnf install python3-bcc bcc), or set ECAPTURE_BCC_PATH to the "
                "directory holding its bcc/ package")


def search_dirs() -> list[str]:
    """Where to look for the bcc package: $ECAPTURE_BCC_PATH first, then SEARCH, newest
    Python first within a pattern."""
    dirs = [d for d in os.environ.get("ECAPTURE_BCC_PATH", "").split(os.pathsep) if d]
    for pattern in SEARCH:
        dirs += sorted(glob.glob(pattern), reverse=True) if "*" in pattern else [pattern]
    return dirs


def load_bcc() -> ModuleType:
    if sys.modules.get("bcc") is not None:
        return sys.modules["bcc"]
    try:
        return importlib.import_module("bcc")
    except ImportError:
        pass
    failure = None
    for base in search_dirs():
        init = os.path.join(base, "bcc", "__init__.py")
        if not os.path.exists(init):
            continue
        spec = importlib.util.spec_from_file_location(
            "bcc", init, submodule_search_locations=[os.path.dirname(init)])
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        sys.modules["bcc"] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # libbcc.so missing or broken: bcc raises at import
            del sys.modules["bcc"]
            failure = failure or f"bcc found at {base} but failed to load ({e})"
            continue  # another copy (e.g. one made for this Python) may load
        if not hasattr(module, "BPF"):
            # The PyPI package called "bcc" is an unrelated math library.
            del sys.modules["bcc"]
            continue
        return module
    if failure:
        raise PrerequisiteError(f"{failure}; {INSTALL_HINT}")
    raise PrerequisiteError(f"bcc (BPF Compiler Collection) is not installed; {INSTALL_HINT}")
