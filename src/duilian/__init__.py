"""duilian (对联): Chinese couplets that are right in form every time."""

__version__ = "0.1.0"
