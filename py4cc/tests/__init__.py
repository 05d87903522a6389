"""The py4cc unittest suite.

Run from the repository root::

    python3 -m unittest discover -s py4cc/tests -t .
"""
