"""specforge-dpace: acceptance-aware objectives for SpecForge DFlash drafters.

Importing this package is cheap; the SpecForge hooks import SpecForge only when installed.
"""

from .losses import available_losses, block_loss, build_loss, register_loss

__version__ = "0.1.0"


def install(**kwargs):
    """Patch the SpecForge layout found in this environment (see :mod:`specforge_dpace.hooks`)."""
    from .hooks import install as _install

    return _install(**kwargs)


def uninstall():
    """Restore every attribute :func:`install` patched."""
    from .hooks import uninstall as _uninstall

    return _uninstall()


def is_installed() -> bool:
    from .hooks import is_installed as _is_installed

    return _is_installed()


__all__ = [
    "__version__",
    "available_losses",
    "block_loss",
    "build_loss",
    "install",
    "is_installed",
    "register_loss",
    "uninstall",
]
