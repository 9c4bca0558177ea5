"""Feature extraction: what an extractor is (base), one module per method family, the method list (registry).

Importing this package imports nothing else: each module is imported where it is used.
"""
