"""duilian (对联): Chinese couplets that are right in form every time.

    import duilian
    c = duilian.load()                 # or duilian.load("path/to/model-dir")
    c.complete("丹枫江冷人初去", n=5)
"""

__version__ = "0.1.0"

# The API imports torch; load it on first use so `import duilian` (and the CLI's argument parsing) stays light.
_API = ("load", "Couplets", "Candidate", "AcrosticCouplet", "NoDefaultModelError")
__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'duilian' has no attribute {name!r}")
