"""Packaging glue: setup.cfg holds the metadata.

``twisted.plugins`` is listed explicitly so the ``twistd mterelay`` plugin is
installed alongside Twisted's own plugins (it must not be a real package: it
has no ``__init__.py`` on purpose).
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["mterelay", "mterelay.*"]) + ["twisted.plugins"],
    # (Here, not in setup.cfg: a package_data argument replaces setup.cfg's.)
    # mterelay/public: the browser client's build files, served at /public/.
    package_data={"twisted": ["plugins/mterelay_plugin.py"], "mterelay": ["public/*"]},
)
