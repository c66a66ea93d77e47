"""fit wing: the step, the loop, run directories — and ``vaelab.fit(...)`` itself.

``vaelab.fit`` is this package and also a function: calling it trains your own networks
(:func:`vaelab.fit.custom.fit`), while ``vaelab.fit.train`` and the other modules stay
importable as before. The module's class is swapped for a callable one (Python allows it) so
the two names do not shadow each other; nothing is imported until the call.
"""

import sys
import types


class _CallableWing(types.ModuleType):
    def __call__(self, *args, **kwargs):
        """:func:`vaelab.fit.custom.fit`."""
        from vaelab.fit.custom import fit

        return fit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableWing
