"""Packaging glue: setup.cfg holds the metadata.

``twisted.plugins`` is listed explicitly so the ``twistd mterelay`` plugin is
installed alongside Twisted's own plugins (it must not be a real package: it
has no ``__init__.py`` on purpose).
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["mterelay", "mterelay.*"]) + ["twisted.plugins"],
    # mterelay/public/ holds the browser client built by clients/browser (npm run build),
    # shipped so that pip and the Docker image serve it (at /public/) without Node.
    # (Here, not in setup.cfg: a package_data argument replaces setup.cfg's.)
    package_data={"twisted": ["plugins/mterelay_plugin.py"],
                  "mterelay": ["public/*.js", "public/*.map",
                               "demoapp/*.html", "demoapp/*.js", "demoapp/*.css"]},
)
