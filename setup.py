"""Only job: ship ``specforge_dpace_autoload.pth`` at the root of site-packages.

Python runs ``import`` lines of ``*.pth`` files at start-up; ours arms a lazy post-import
hook (it imports nothing heavy; see ``specforge_dpace/hooks/_autoload.py``).  Regular wheels
get it through ``build_py``; editable installs (``pip install -e``) through a wrapped
editable strategy.  Everything else lives in pyproject.toml.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "specforge_dpace_autoload.pth"
PTH_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), PTH)


class build_py_with_pth(build_py):
    def run(self):
        super().run()
        self.copy_file(PTH_SOURCE, os.path.join(self.build_lib, PTH))

    def get_outputs(self, include_bytecode=True):
        return list(super().get_outputs(include_bytecode)) + [os.path.join(self.build_lib, PTH)]


class _StrategyWithPth:
    def __init__(self, inner):
        self.inner = inner

    def __call__(self, wheel, files, mapping):
        self.inner(wheel, files, mapping)
        with open(PTH_SOURCE, encoding="utf-8") as handle:
            wheel.writestr(PTH, handle.read())

    def __enter__(self):
        self.inner.__enter__()
        return self

    def __exit__(self, *exc):
        return self.inner.__exit__(*exc)


class editable_wheel_with_pth(editable_wheel):
    def _select_strategy(self, *args, **kwargs):
        return _StrategyWithPth(super()._select_strategy(*args, **kwargs))


setup(cmdclass={"build_py": build_py_with_pth, "editable_wheel": editable_wheel_with_pth})
