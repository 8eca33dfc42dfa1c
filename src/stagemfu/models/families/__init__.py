"""One module per model family; importing this package registers every one of them.

A module here subclasses :class:`stagemfu.models.family.Family` and decorates it with
:func:`~stagemfu.models.family.register`. Modules are found by listing the package, so a new
family is one new file.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
